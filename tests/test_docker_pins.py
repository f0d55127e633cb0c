"""The cluster image (docker/) pins the same versions as pyproject.toml and constraints.txt.

The image cannot be built here, so these checks are what keeps it from drifting: torch and
Python versions, the extras it installs, the mm* pins, CUDA versions that fit together, and the
Apptainer recipe pointing at the image this version builds.
"""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = (REPO / "docker" / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _args() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE, flags=re.M))


def _pins() -> dict[str, str]:
    """package -> exact version pinned anywhere in constraints.txt or pyproject.toml."""
    lines = [line.split("#")[0].strip() for line in (REPO / "constraints.txt").read_text().splitlines()]
    lines += PYPROJECT["project"]["dependencies"]
    for extra in PYPROJECT["project"].get("optional-dependencies", {}).values():
        lines += extra
    pins: dict[str, str] = {}
    for line in filter(None, lines):
        req = Requirement(line)
        exact = [s.version for s in req.specifier if s.operator == "=="]
        if exact:
            assert pins.setdefault(req.name.lower(), exact[0]) == exact[0], f"two pins for {req.name}"
    return pins


def test_torch_version_matches_the_project_pin():
    pins = _pins()
    assert _args()["TORCH_VERSION"] == pins["torch"]
    assert 'torch==${TORCH_VERSION}' in DOCKERFILE


def test_python_version_is_allowed_by_the_project():
    version = _args()["PYTHON_VERSION"]
    assert Version(version) in SpecifierSet(PYPROJECT["project"]["requires-python"])
    assert "python${PYTHON_VERSION} -m venv" in DOCKERFILE


def test_extras_exist_and_are_the_gpu_ones():
    extras = _args()["EXTRAS"].split(",")
    known = PYPROJECT["project"]["optional-dependencies"]
    assert set(extras) <= set(known), f"unknown extras {set(extras) - set(known)}"
    assert "gpu" in extras and "cpu" not in extras
    installed = [Requirement(r).name for e in extras for r in known[e] if not r.startswith("labelmaker")]
    assert "open3d-cpu" not in installed and "mmcv-lite" not in installed
    assert "-c constraints.txt" in DOCKERFILE and '".[${EXTRAS}]"' in DOCKERFILE


def test_mm_packages_match_the_project_pins_where_it_has_them():
    args, pins = _args(), _pins()
    image = {"mmcv": args["MMCV_VERSION"], "mmengine": args["MMENGINE_VERSION"],
             "mmsegmentation": args["MMSEG_VERSION"], "mmdet": args["MMDET_VERSION"]}
    assert image["mmcv"] == "2.1.0"  # mmseg 1.2.2 / mmdet 3.3.0 need mmcv < 2.2.0
    assert Version(image["mmcv"]) < Version("2.2.0")
    project = dict(pins)
    if "mmcv-lite" in project:  # CPU installs use mmcv-lite of the same version
        project.setdefault("mmcv", project["mmcv-lite"])
    for name, version in image.items():
        if name in project:
            assert version == project[name], f"{name}: image {version}, project {project[name]}"


def test_cuda_versions_fit_together():
    base = re.search(r"^FROM nvidia/cuda:(\d+)\.(\d+)\.\d+-cudnn-devel-ubuntu[\d.]+$", DOCKERFILE, flags=re.M)
    assert base, "base image must be a pinned nvidia/cuda devel tag"
    major, minor = base.groups()
    assert major == "12"
    assert _args()["TORCH_CUDA"] == f"cu{major}{minor}"  # nvcc for mmcv must match torch's CUDA
    arch = re.search(r'TORCH_CUDA_ARCH_LIST="([^"]+)"', DOCKERFILE).group(1).split(";")
    assert {"8.0", "9.0"} <= set(arch)
    assert "MMCV_WITH_OPS=1" in DOCKERFILE and "--no-build-isolation" in DOCKERFILE


def test_build_context_keeps_what_the_image_copies():
    ignore = (REPO / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
    for line in re.findall(r"^COPY (.+) \S+$", DOCKERFILE, flags=re.M):
        for src in line.split():
            assert f"!{src}" in ignore or f"!{src}/" in ignore, f"{src} is excluded from the build context"
            assert (REPO / src).exists(), src


def test_apptainer_recipe_uses_this_version_of_the_image():
    version = PYPROJECT["project"]["version"]
    recipe = (REPO / "docker" / "labelmaker.def").read_text()
    assert re.search(r"^Bootstrap: docker-archive$", recipe, flags=re.M)
    assert re.search(rf"^From: labelmaker-{re.escape(version)}\.tar$", recipe, flags=re.M)
    assert f"labelmaker:{version}" in DOCKERFILE
    readme = (REPO / "docker" / "README.md").read_text()
    assert f"docker save labelmaker:{version} -o labelmaker-{version}.tar" in readme
