import os
import shutil
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# Tests run on CPU torch, where the registry's torchvision wheel cannot load its compiled ops:
# opt in to the pure-PyTorch NMS (labelmaker/compat/torchvision_cpu.py) for SAM and open_clip.
os.environ.setdefault("LABELMAKER_TORCHVISION_CPU_NMS", "1")


@pytest.fixture(scope="session")
def synth_scene_factory(tmp_path_factory):
    """Make (and cache) synthetic ARKitScenes videos; tests get their own copy to modify."""
    from labelmaker.synthetic import SynthConfig, make_scene

    cache = {}

    def make(tmp_path: Path | None = None, **overrides):
        key = tuple(sorted(overrides.items()))
        if key not in cache:
            root = tmp_path_factory.mktemp("synth")
            cache[key] = make_scene(SynthConfig(**overrides), root)
        scene = cache[key]
        if tmp_path is None:
            return scene
        shutil.copytree(scene.root, tmp_path / "raw")
        return type(scene)(
            root=tmp_path / "raw",
            video_dir=tmp_path / "raw" / scene.video_id,
            video_id=scene.video_id,
            gt_dir=tmp_path / "raw" / scene.video_id / "ground_truth",
        )

    return make


@pytest.fixture
def fails_cleanly_then_recovers(tmp_path):
    """Import a damaged copy of a capture: a clear BadInputError and a failed record; then
    restore the copy and import again: done. Returns the successful import's summary."""
    from labelmaker.errors import BadInputError
    from labelmaker.pipeline.stages import import_scene
    from labelmaker.workspace import Workspace

    def check(folder: Path, pristine: Path, cfg, must_mention: list[str]) -> dict:
        ws = Workspace(tmp_path / "ws_checked")
        with pytest.raises(BadInputError) as err:
            import_scene(folder, ws, cfg, progress=False)
        message = str(err.value)
        assert all(text in message for text in must_mention) and "Fix:" in message, message
        assert not ws.is_done("import")
        assert ws.read_state("import")["status"] == "failed"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(pristine, folder)
        summary = import_scene(folder, ws, cfg, progress=False).record["summary"]
        assert ws.is_done("import")
        return summary

    return check


# The local SLURM cluster for integration tests (slurm/local/start.sh): `local_slurm`.
from slurm_cluster import local_slurm  # noqa: E402,F401
