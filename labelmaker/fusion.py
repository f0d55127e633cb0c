"""TSDF fusion of depth frames into a triangle mesh (open3d tensor VoxelBlockGrid).

Runs on CUDA when open3d was built with it and a GPU is there, else on the CPU. Memory grows
with the surface actually seen: the voxel-block hash map starts small and rehashes as it fills,
instead of preallocating gigabytes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from .devices import open3d_device
from .frames import FrameBatch
from .mesh import MeshArrays, canonical_order, empty_mesh


@dataclass
class FusionConfig:
    voxel_size_m: float = 0.02
    trunc_voxels: float = 4.0  # truncation distance in voxels
    depth_min_m: float = 0.1
    depth_max_m: float = 5.0
    block_resolution: int = 8  # voxels per block side
    initial_blocks: int = 4096  # initial hash map capacity; it grows as needed
    weight_threshold: float = 2.0  # min integration weight of a voxel to extract surface from it
    frame_step: int = 1  # integrate every k-th frame
    device: str = "auto"  # auto | cpu | cuda


class TSDFVolume:
    """An incremental TSDF volume: integrate frames one by one, then extract the mesh."""

    def __init__(self, cfg: FusionConfig):
        import open3d as o3d
        import open3d.core as o3c

        self.cfg = cfg
        self.device = open3d_device(cfg.device)
        self._o3d, self._o3c = o3d, o3c
        self.grid = o3d.t.geometry.VoxelBlockGrid(
            attr_names=("tsdf", "weight", "color"),
            attr_dtypes=(o3c.float32, o3c.float32, o3c.float32),
            attr_channels=((1), (1), (3)),
            voxel_size=float(cfg.voxel_size_m),
            block_resolution=int(cfg.block_resolution),
            block_count=int(cfg.initial_blocks),
            device=self.device,
        )
        self.frames_integrated = 0

    def integrate(
        self, depth_mm: np.ndarray, color: np.ndarray, K_depth: np.ndarray, K_color: np.ndarray, T_cw: np.ndarray
    ) -> None:
        o3d, o3c, cfg = self._o3d, self._o3c, self.cfg
        depth = np.where(depth_mm < cfg.depth_min_m * 1000.0, 0, depth_mm).astype(np.uint16)
        depth_img = o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(depth))).to(self.device)
        color_img = o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(color))).to(self.device)
        Kd = o3c.Tensor(np.asarray(K_depth, dtype=np.float64))
        Kc = o3c.Tensor(np.asarray(K_color, dtype=np.float64))
        extrinsic = o3c.Tensor(np.asarray(T_cw, dtype=np.float64))
        blocks = self.grid.compute_unique_block_coordinates(
            depth_img, Kd, extrinsic, 1000.0, float(cfg.depth_max_m), float(cfg.trunc_voxels)
        )
        self.grid.integrate(
            blocks, depth_img, color_img, Kd, Kc, extrinsic, 1000.0, float(cfg.depth_max_m), float(cfg.trunc_voxels)
        )
        self.frames_integrated += 1

    @property
    def block_count(self) -> int:
        return int(self.grid.hashmap().size())

    def extract_mesh(self) -> MeshArrays:
        mesh = self.grid.extract_triangle_mesh(weight_threshold=float(self.cfg.weight_threshold)).to(
            self._o3c.Device("CPU:0")
        )
        if "positions" not in mesh.vertex or mesh.vertex.positions.shape[0] == 0:
            return empty_mesh()
        colors = mesh.vertex.colors.numpy()
        # open3d keeps the colour channel in the input's 0-255 range for uint8 images.
        scale = 255.0 if colors.max() <= 1.0 + 1e-6 else 1.0
        return canonical_order(MeshArrays(
            vertices=mesh.vertex.positions.numpy().astype(np.float32),
            triangles=mesh.triangle.indices.numpy().astype(np.int32),
            colors=np.clip(np.rint(colors * scale), 0, 255).astype(np.uint8),
            normals=mesh.vertex.normals.numpy().astype(np.float32),
        ))


def iter_frames(
    batches: Iterable[FrameBatch], step: int = 1
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(depth, color, K_depth, K_color, T_cw) for every `step`-th frame across batches."""
    index = 0
    for batch in batches:
        for i in range(len(batch)):
            if index % max(1, step) == 0:
                yield batch.depth[i], batch.color[i], batch.K_depth[i], batch.K_color[i], batch.T_cw[i]
            index += 1
