import shutil
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


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
