"""Ground truth beside a capture (synthetic scenes write it; the evaluation reads it).

    <video dir>/ground_truth/
        classes.json             [{"id", "name", "color"}]: the GT's own class ids and names
        mesh.ply                 the labelled surface; vertex_labels.npy / vertex_instances.npy per vertex
        labels/<frame>.png       per-pixel class ids (uint16), instances/<frame>.png per-pixel instances
        poses.npz                exact frame poses

GT class names are unified class names, so `unified_ids` turns GT ids into unified ids.
"""
from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import numpy as np

from ..errors import BadInputError
from ..mesh import MeshArrays, read_mesh
from .images import read_image

GT_DIR = "ground_truth"
CLASSES = "classes.json"
MESH = "mesh.ply"
VERTEX_LABELS = "vertex_labels.npy"
VERTEX_INSTANCES = "vertex_instances.npy"
PIXEL_LABELS = "labels"
PIXEL_INSTANCES = "instances"
POSES = "poses.npz"


def find_ground_truth(input_dir: Path) -> Path | None:
    folder = Path(input_dir) / GT_DIR
    return folder if (folder / CLASSES).exists() else None


def simulation_ground_truth(scene: str, input_dir: Path, who: str, fix: str,
                            cached: "GroundTruth | None" = None) -> "GroundTruth":
    """The synthetic ground truth that `who` (a simulated model or mask source) derives from;
    bad input naming `fix` when the scene has none. Reuses `cached` when it is this scene's."""
    if cached is not None and cached.scene == scene:
        return cached
    folder = find_ground_truth(input_dir)
    if folder is None:
        raise BadInputError(
            scene, input_dir, f"{who} is simulated and needs synthetic ground truth, which this scene has not", fix
        )
    return GroundTruth(folder, scene)


class GroundTruth:
    def __init__(self, folder: Path, scene: str):
        self.folder = Path(folder)
        self.scene = scene
        if not (self.folder / CLASSES).exists():
            raise BadInputError(
                scene,
                self.folder / CLASSES,
                "ground truth has no classes.json",
                "point evaluate.ground_truth at a ground-truth folder",
            )

    @cached_property
    def class_names(self) -> dict[int, str]:
        return {int(c["id"]): c["name"] for c in json.loads((self.folder / CLASSES).read_text())}

    @cached_property
    def unified_ids(self) -> np.ndarray:
        """Lookup table GT id -> unified id (0 for GT classes with no unified counterpart)."""
        from ..labels import UNKNOWN, unified_space

        space = unified_space()
        table = np.zeros(max(self.class_names) + 1, dtype=np.int64)
        for gt_id, name in self.class_names.items():
            try:
                table[gt_id] = space.id_of(name)
            except KeyError:
                table[gt_id] = UNKNOWN
        return table

    def frame_labels(self, frame: str) -> np.ndarray:
        """Per-pixel unified ids of one frame."""
        return self.unified_ids[
            read_image(self.folder / PIXEL_LABELS / f"{frame}.png", self.scene, "ground-truth labels")
        ]

    def frame_instances(self, frame: str) -> np.ndarray:
        return read_image(self.folder / PIXEL_INSTANCES / f"{frame}.png", self.scene, "ground-truth instances").astype(
            np.int64
        )

    def mesh(self) -> MeshArrays:
        return read_mesh(self.folder / MESH)

    def poses(self) -> tuple[np.ndarray, np.ndarray]:
        """Exact frame timestamps (N,) and world-to-camera poses (N,4,4)."""
        with np.load(self.folder / POSES) as data:
            return data["timestamps"], data["T_cw"]

    def vertex_instances(self) -> np.ndarray | None:
        """Per-vertex instance ids of the GT mesh (0 = none), or None when the GT has none."""
        path = self.folder / VERTEX_INSTANCES
        return np.load(path).astype(np.int64) if path.exists() else None

    def vertex_labels(self) -> np.ndarray:
        """Per-vertex unified ids of the GT mesh."""
        return self.unified_ids[np.load(self.folder / VERTEX_LABELS)]
