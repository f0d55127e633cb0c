"""Checkpoints: the manifest, clear errors for missing and damaged files, safe loading, the
resumable verified download, and `labelmaker doctor`."""
import hashlib
import http.server
import threading

import pytest
import torch

from labelmaker.cli import main
from labelmaker import checkpoints
from labelmaker.segmenters.base import Mask2FormerConfig, ModelConfig
from labelmaker.checkpoints import (
    CheckpointEntry,
    CheckpointError,
    load_checkpoint,
    locate,
    manifest,
    verify,
)
from labelmaker.segmenters.download import download

PAYLOAD = bytes(range(256)) * 4000  # ~1 MB
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


def test_the_manifest_names_file_source_and_licence_of_each_model():
    known = manifest()
    assert {"mask2former_swin-l_ade20k", "mask2former_r50_ade20k", "sam_vit_h"} <= set(known)
    for e in known.values():
        assert e.file and e.licence
        if not e.url:  # no public download (DeepLab's ONNX conversion): the sha256 is what identifies it
            assert len(e.sha256) == 64 and "no download" in checkpoints.fetch_command(e, checkpoints.Path("/ckpt"))
            continue
        assert e.url.startswith("https://")
        # stored under the URL's file name, except Hugging Face's generic names (open_clip_pytorch_model.bin
        # for every CLIP), which are stored under a name of their own
        assert e.url.endswith(e.file) or e.url.startswith("https://huggingface.co/")
        # OpenMMLab publishes the sha256's first 8 hex digits in the file name
        if "openmmlab" in e.url:
            assert e.file.rsplit("-", 1)[1].startswith(e.sha256) and len(e.sha256) == 8


def test_a_missing_checkpoint_names_the_file_and_the_command_to_fetch_it(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError) as err:
        locate("mask2former_r50_ade20k", str(tmp_path))
    message = str(err.value)
    entry = manifest()["mask2former_r50_ade20k"]
    assert entry.file in message and str(tmp_path) in message
    assert f"python scripts/download_checkpoints.py mask2former_r50_ade20k --dir {tmp_path}" in message
    monkeypatch.delenv(checkpoints.ENV_DIR, raising=False)
    with pytest.raises(CheckpointError, match="no checkpoint folder is configured.*Fix: set checkpoints.dir"):
        locate("mask2former_r50_ade20k", None)
    monkeypatch.setenv(checkpoints.ENV_DIR, str(tmp_path))
    with pytest.raises(CheckpointError, match=f"missing from {tmp_path}"):
        locate("mask2former_r50_ade20k", None)


@pytest.fixture
def fake_manifest(monkeypatch):
    def use(**entries):
        monkeypatch.setattr(checkpoints, "manifest", lambda: entries)
    return use


@pytest.mark.parametrize("published", [DIGEST, DIGEST[:8]])
def test_a_checksum_mismatch_is_an_error(published, tmp_path, fake_manifest):
    entry = CheckpointEntry("toy", "toy.pth", "https://example.org/toy.pth", published, "MIT")
    fake_manifest(toy=entry)
    (tmp_path / "toy.pth").write_bytes(PAYLOAD)
    path, found = locate("toy", str(tmp_path))
    assert found == entry and verify(path, entry) is True
    (tmp_path / "toy.pth").write_bytes(PAYLOAD[:-1] + b"x")
    with pytest.raises(
        CheckpointError,
        match=r"does not match the published .*Fix: delete it and fetch it again: python "
              r"scripts/download_checkpoints.py toy",
    ):
        verify(path, entry)


def test_loading_takes_tensors_and_refuses_other_objects_without_a_checksum(tmp_path, fake_manifest):
    torch.save({"state_dict": {"w": torch.ones(2)}}, tmp_path / "plain.pth")
    state, _ = load_checkpoint("plain.pth", str(tmp_path))
    assert torch.equal(state["state_dict"]["w"], torch.ones(2))

    class Odd:  # a pickled object that weights-only loading refuses
        pass

    import builtins
    builtins._labelmaker_test_odd = Odd
    Odd.__module__, Odd.__qualname__ = "builtins", "_labelmaker_test_odd"
    torch.save({"state_dict": {}, "meta": Odd()}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="holds more than tensors and has no published checksum"):
        load_checkpoint("odd.pth", str(tmp_path))
    digest = hashlib.sha256((tmp_path / "odd.pth").read_bytes()).hexdigest()
    fake_manifest(odd=CheckpointEntry("odd", "odd.pth", "https://example.org/odd.pth", digest, "MIT"))
    state, _ = load_checkpoint("odd", str(tmp_path))  # trusted by its published checksum
    assert isinstance(state["meta"], Odd)
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read as a torch checkpoint"):
        load_checkpoint("broken.pth", str(tmp_path))


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD, honouring `Range: bytes=N-` (as the model zoos' servers do)."""

    def do_GET(self):
        start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
        body = PAYLOAD[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_download_resumes_and_verifies(server, tmp_path):
    entry = CheckpointEntry("toy", "toy.pth", f"{server}/toy.pth", DIGEST[:8], "MIT")
    (tmp_path / ".toy.pth.part").write_bytes(PAYLOAD[:1000])  # an interrupted earlier run (the project's one fetcher)
    assert download(entry, tmp_path, progress=False) == "resumed"
    assert (tmp_path / "toy.pth").read_bytes() == PAYLOAD and not list(tmp_path.glob(".*.part"))
    assert download(entry, tmp_path, progress=False) == "present"
    bad = CheckpointEntry("bad", "bad.pth", f"{server}/bad.pth", "00000000", "MIT")
    with pytest.raises(CheckpointError, match="does not match"):
        download(bad, tmp_path, progress=False)
    assert not (tmp_path / "bad.pth").exists() and not list(tmp_path.glob(".*.part"))


def test_a_hugging_face_folder_is_fetched_file_by_file_and_resumes(server, tmp_path, fake_manifest):
    files = "config.json;model.safetensors;preprocessor_config.json"
    entry = CheckpointEntry("hfmodel", "hfmodel", f"{server}/org/repo/resolve/main", "", "MIT", files)
    fake_manifest(hfmodel=entry)
    with pytest.raises(CheckpointError, match="lacks config.json, model.safetensors, preprocessor_config.json.*"
                                              "download_checkpoints.py hfmodel --dir"):
        locate("hfmodel", str(tmp_path))
    folder = tmp_path / "hfmodel"
    folder.mkdir()
    (folder / "config.json").write_bytes(PAYLOAD)  # finished before the interruption
    (folder / ".model.safetensors.part").write_bytes(PAYLOAD[:5000])  # interrupted
    assert download(entry, tmp_path, progress=False) == "resumed"
    assert all((folder / f).read_bytes() == PAYLOAD for f in files.split(";")) and not list(folder.glob(".*"))
    assert locate("hfmodel", str(tmp_path)) == (folder, entry)
    assert download(entry, tmp_path, progress=False) == "present"


def _m2f(folder, checkpoint, stand_in=True):
    return ModelConfig(kind="mask2former", checkpoint_dir=str(folder), device="cpu",
                       mask2former=Mask2FormerConfig(checkpoint=checkpoint, allow_cpu_ops_stand_in=stand_in))


def test_doctor_fails_on_a_missing_checkpoint_and_passes_when_it_is_there(tmp_path, capsys):
    pytest.importorskip("mmseg")
    from labelmaker.doctor import DoctorFailed, doctor

    with pytest.raises(DoctorFailed, match="checkpoint m2f"):
        doctor({"m2f": _m2f(tmp_path, "mask2former_r50_ade20k")})
    table = capsys.readouterr().out
    assert "FAIL checkpoint m2f" in table and "download_checkpoints.py mask2former_r50_ade20k" in table
    torch.save({"state_dict": {}}, tmp_path / "mine.pth")
    with pytest.raises(DoctorFailed, match="checkpoint sam"):  # other models' checkpoints (e.g. SAM mask models)
        doctor({"m2f": _m2f(tmp_path, "mine.pth")}, {"sam": ("sam_vit_b", str(tmp_path))})
    assert "sam_vit_b_01ec64.pth is missing" in capsys.readouterr().out
    checks = doctor({"m2f": _m2f(tmp_path, "mine.pth")})
    assert {c.name for c in checks} >= {"torch", "CUDA", "mmsegmentation", "deformable attention", "checkpoint m2f"}
    assert "all required checks passed" in capsys.readouterr().out
    if not torch.cuda.is_available():  # without the stand-in allowed, mmcv-lite has no ops for it
        from labelmaker.segmenters.mmcv_ops import mmcv_ops_status

        if mmcv_ops_status() != "compiled":
            with pytest.raises(DoctorFailed, match="deformable attention"):
                doctor({"m2f": _m2f(tmp_path, "mine.pth", stand_in=False)})


def test_doctor_command_exits_non_zero_when_something_required_is_missing(tmp_path, capsys):
    pytest.importorskip("mmseg")
    assert main(["doctor", "models=mask2former", f"checkpoints.dir={tmp_path}"]) == 5
    assert "missing from" in capsys.readouterr().out
    assert main(["doctor"]) == 0  # no models configured: nothing required beyond the basics


def test_doctor_finds_checkpoints_of_models_outside_segment_models():
    from dataclasses import dataclass, field

    from labelmaker.doctor import other_checkpoints

    @dataclass
    class Sam:
        checkpoint: str = "sam_vit_h_4b8939.pth"
        checkpoint_dir: str = "/ckpt"

    @dataclass
    class MaskModel:
        kind: str = "sam"
        sam: Sam = field(default_factory=Sam)

    @dataclass
    class Masks:
        models: dict = field(default_factory=lambda: {"sam": MaskModel(), "simulated": object()})

    @dataclass
    class Root:
        masks: Masks = field(default_factory=Masks)

    assert other_checkpoints(Root()) == {"sam": ("sam_vit_h_4b8939.pth", "/ckpt")}
    assert other_checkpoints(object()) == {}



def test_doctor_finds_no_checkpoint_for_models_without_one():
    from labelmaker.doctor import model_checkpoints

    assert model_checkpoints(ModelConfig(kind="simulated")) == []


def test_doctor_checks_torchvision_where_sam_or_open_clip_need_it(tmp_path, capsys, monkeypatch):
    """A CPU torch beside a CUDA-built torchvision fails at import; doctor says so, with the fix."""
    from labelmaker.compat import torchvision_cpu
    from labelmaker.doctor import DoctorFailed, doctor

    torch.save({"state_dict": {}}, tmp_path / "sam.pth")
    checks = {c.name: c for c in doctor({}, {"sam": ("sam.pth", str(tmp_path))})}
    assert checks["torchvision"].ok and checks["torchvision"].required  # the tests' opt-in makes it import

    def broken():
        raise RuntimeError(
            "torchvision cannot load its compiled ops next to torch ... Fix: install the torchvision build"
        )

    monkeypatch.setattr(torchvision_cpu, "import_torchvision", broken)
    with pytest.raises(DoctorFailed, match="torchvision"):
        doctor({}, {"sam": ("sam.pth", str(tmp_path))})
    out = capsys.readouterr().out
    assert "FAIL torchvision" in out and "Fix: install the torchvision build" in out
    checks = {c.name: c for c in doctor({})}  # nothing needs it: reported, not required
    assert not checks["torchvision"].ok and not checks["torchvision"].required


def test_the_ensemble_preset_composes_and_doctor_lists_every_checkpoint_it_needs(tmp_path, capsys):
    from labelmaker.config import load_config
    from labelmaker.doctor import model_checkpoints, other_checkpoints

    cfg = load_config(["models=ensemble", f"checkpoints.dir={tmp_path}"])[0]
    models = cfg.segment.models
    assert {n: (m.kind, m.label_space) for n, m in models.items()} == {
        "eomt_ade20k": ("transformers", "ade20k"),
        "mask2former_coco": ("transformers", "coco_panoptic"),
        "grounded_sam": ("grounded_sam", "unified"),
    }
    assert models["eomt_ade20k"].flip_tta and models["mask2former_coco"].flip_tta
    assert cfg.consensus.sam_refine.enabled and cfg.masks.models["sam"].kind == "sam"
    off = load_config(["models=ensemble", "consensus.sam_refine.enabled=false"])[0]
    assert off.consensus.sam_refine.enabled is False
    assert not load_config(["models=simulated"])[0].consensus.sam_refine.enabled  # other presets keep the default
    needed = {s for m in models.values() for s in model_checkpoints(m)} | {
        s for s, _ in other_checkpoints(cfg).values()
    }
    assert needed == {
        "eomt_large_ade20k_512",
        "mask2former_swin_l_coco_panoptic_hf",
        "grounding_dino_base",
        "sam_vit_h",
    }
    assert needed <= set(manifest())

    assert main(["doctor", "models=ensemble", f"checkpoints.dir={tmp_path}"]) == 5
    out = capsys.readouterr().out
    for spec in needed:
        assert f"download_checkpoints.py {spec} --dir {tmp_path}" in out
    for piece in (
        "model eomt_ade20k",
        "model mask2former_coco",
        "model grounded_sam",
        "masks sam",
        "ok   SAM refinement",
    ):
        assert piece in out
    for spec in needed:  # every file in place (contents are not checked without a published sha256)
        e = manifest()[spec]
        for name in e.folder_files or [e.file]:
            path = tmp_path / (f"{e.file}/{name}" if e.folder_files else name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")
    assert main(["doctor", "models=ensemble", f"checkpoints.dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "ok   checkpoint eomt_ade20k " in out and "ok   checkpoint grounded_sam/grounding_dino_base" in out
    assert "all required checks passed" in out
