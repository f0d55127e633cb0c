"""Model checkpoints: the manifest (checkpoints.csv), finding a model's file in the configured
folder, checking it, loading it.

The manifest lists per model: the file name, where to download it, its sha256 where published
(OpenMMLab publishes the first 8 hex digits of the sha256 in the file name: a shorter value is
checked as a prefix) and its licence. Checkpoints live in one folder: a model's `checkpoint_dir`
(the presets set it to `${checkpoints.dir}`, which defaults to $LABELMAKER_CHECKPOINT_DIR or
./checkpoints). No network here: a missing file is an error that says how to fetch it.
"""
from __future__ import annotations

import csv
import os
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

from .digests import sha256_of
from .errors import SetupError

ENV_DIR = "LABELMAKER_CHECKPOINT_DIR"
MANIFEST = Path(__file__).with_name("checkpoints.csv")
DOWNLOAD_SCRIPT = "python scripts/download_checkpoints.py"


class CheckpointError(SetupError):
    """A model's weights are missing or damaged: a setup problem, not the scene's."""

    error_class = "missing_checkpoint"

    def __init__(self, path: Path | str, problem: str, fix: str):
        self.path = str(path)
        super().__init__(f"checkpoint '{path}'", problem, fix)


@dataclass
class CheckpointsConfig:
    # the folder holding all models' checkpoint files (config.yaml: $LABELMAKER_CHECKPOINT_DIR if set)
    dir: str = "checkpoints"


@dataclass(frozen=True)
class CheckpointEntry:
    model: str
    # the file's name in the checkpoint folder; a Hugging Face model: the sub-folder's name
    file: str
    # where the file is ("" = no public download: put it into the folder by hand); a Hugging Face
    # model: the repository's base (<url>/<name> for each of `files`)
    url: str
    sha256: str  # full hex digest, a published prefix, or "" (none published)
    licence: str
    files: str = ""  # a Hugging Face model folder: the files it holds, ';'-separated (fetched one by one)

    @property
    def folder_files(self) -> list[str]:
        return [f.strip() for f in self.files.split(";") if f.strip()]

    def file_url(self, name: str) -> str:
        return f"{self.url.rstrip('/')}/{name}"


@lru_cache(maxsize=1)
def manifest() -> dict[str, CheckpointEntry]:
    with open(MANIFEST, newline="") as f:
        return {row["model"]: CheckpointEntry(**{k: v or "" for k, v in row.items()}) for row in csv.DictReader(f)}


def entry_for_file(name: str) -> Optional[CheckpointEntry]:
    return next((e for e in manifest().values() if e.file == name), None)


def checkpoint_dir(configured: Optional[str]) -> Path:
    """The configured folder, else $LABELMAKER_CHECKPOINT_DIR."""
    folder = configured or os.environ.get(ENV_DIR)
    if not folder:
        raise CheckpointError(
            "(no folder)",
            "no checkpoint folder is configured",
            f"set checkpoints.dir=/path/to/checkpoints (or the model's checkpoint_dir, or ${ENV_DIR})",
        )
    return Path(folder).expanduser()


def fetch_command(entry: Optional[CheckpointEntry], folder: Path) -> str:
    if entry is None:
        return f"put the file into {folder} (it is not in the manifest {MANIFEST.name}, so no download is known)"
    if not entry.url:
        return (f"put {entry.file} into {folder} "
                f"(no download is known for {entry.model}: see its licence note in {MANIFEST.name})")
    if entry.folder_files:
        return (f"{DOWNLOAD_SCRIPT} {entry.model} --dir {folder}  (or download {', '.join(entry.folder_files)} "
                f"from {entry.url}/ into {folder / entry.file}/)")
    return f"{DOWNLOAD_SCRIPT} {entry.model} --dir {folder}  (or download {entry.url} into {folder})"


def locate(spec: str, folder: Optional[str]) -> tuple[Path, Optional[CheckpointEntry]]:
    """A checkpoint named by manifest model name, file name (in the folder) or path -> its path
    and manifest entry (None if not in the manifest). Raises CheckpointError if it is missing."""
    entry = manifest().get(spec)
    if entry is not None:
        base = checkpoint_dir(folder)
        path = base / entry.file
    elif os.sep in spec or Path(spec).is_absolute():
        path = Path(spec).expanduser()
        base = path.parent
        entry = entry_for_file(path.name)
    else:
        base = checkpoint_dir(folder)
        path = base / spec
        entry = entry_for_file(spec)
    if entry is not None and entry.folder_files:
        missing = [f for f in entry.folder_files if not (path / f).is_file()]
        if missing:
            raise CheckpointError(
                path, f"the model folder {path.name} in {base} lacks {', '.join(missing)}", fetch_command(entry, base)
            )
    elif path.is_dir():
        pass  # a model folder outside the manifest: its loader checks what it needs
    elif not path.is_file():
        raise CheckpointError(path, f"the file {path.name} is missing from {base}", fetch_command(entry, base))
    return path, entry


def locate_model_folder(
    spec: str, folder: Optional[str], needs: tuple[str, ...] = ("config.json",)
) -> tuple[Path, Optional[CheckpointEntry]]:
    """A Hugging Face model folder (config.json + *.safetensors, and `needs`) named like any
    checkpoint (manifest name, folder name in the checkpoint folder, or path)."""
    path, entry = locate(spec, folder)
    if not path.is_dir():
        raise CheckpointError(
            path,
            "is a file, not a model folder in Hugging Face's format (config.json + *.safetensors)",
            "point the checkpoint at the folder that holds config.json",
        )
    missing = [n for n in needs if not (path / n).is_file()]
    if not any(path.glob("*.safetensors")):
        missing.append("*.safetensors")
    if missing:
        raise CheckpointError(
            path,
            f"the model folder lacks {', '.join(missing)} (only safetensors weights are loaded)",
            fetch_command(entry, path.parent),
        )
    return path, entry


def verify(path: Path, entry: Optional[CheckpointEntry]) -> bool:
    """True when the file matches its published sha256 (full or prefix); False when none is
    published; CheckpointError when it does not match."""
    if entry is None or not entry.sha256:
        return False
    digest = sha256_of(path)
    if not digest.startswith(entry.sha256.lower()):
        raise CheckpointError(
            path,
            f"sha256 {digest[:16]}... does not match the published {entry.sha256} (damaged or incomplete download?)",
            f"delete it and fetch it again: {fetch_command(entry, path.parent)}",
        )
    return True


def load_checkpoint(spec: str, folder: Optional[str]) -> tuple[dict, Path]:
    """Find, verify and load a checkpoint (on the CPU). Tensors only unless the file matched its
    published checksum (old files that also pickle other objects then load as well)."""
    import pickle

    import torch

    path, entry = locate(spec, folder)
    verified = verify(path, entry)
    if not verified and not zipfile.is_zipfile(path):
        raise CheckpointError(
            path,
            "cannot be read as a torch checkpoint (not the zip format torch.save writes)",
            f"fetch it again: {fetch_command(entry, path.parent)}",
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True), path
    except pickle.UnpicklingError as err:
        if not verified:
            raise CheckpointError(
                path,
                f"it holds more than tensors and has no published checksum to trust it by ({err})",
                "save the weights alone (torch.save of the state dict), or add its sha256 to the manifest",
            ) from err
        return torch.load(path, map_location="cpu", weights_only=False), path
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(
            path,
            f"cannot be read as a torch checkpoint ({err})",
            f"fetch it again: {fetch_command(entry, path.parent)}",
        ) from err
