"""Stage `masks-<model>` (class-agnostic mask-id maps per frame) and the consensus's use of them.

The mask stage resumes shard by shard like the segment stage. The consensus stage calls
`refinement_input` and `refine_shard` when `consensus.sam_refine.enabled` is set.
"""
from __future__ import annotations


import numpy as np

from ..errors import BadInputError
from ..masks import MaskModelConfig, build_mask_model
from ..refine import SamRefineConfig, refine_with_masks
from ..workspace import FRAMES_DIR, MASKS_DIR, SCENE_FILE, Workspace
from ..digests import stable_hash
from .records import StageOutcome, run_stage
from .table import from_stage, stage_kind, stage_name, versioned
from .stages import FrameShardPass, require_done, scene_context


def masks_scene(
    ws: Workspace, model: str, cfg: MaskModelConfig, force: bool = False, progress: bool = True
) -> StageOutcome:
    """Stage `masks-<model>`: a uint16 mask-id map per frame at the colour raster (0 = no mask)."""
    stage = stage_name("masks", model)
    imported = require_done(ws, stage, "import")
    config = versioned("masks", cfg)
    cfg_hash = stable_hash(config)

    def body() -> dict:
        generator = build_mask_model(model, cfg)
        ctx = scene_context(ws)
        shards = ws.mask_shards(model)
        walk = FrameShardPass(ws, shards, cfg_hash, imported, f"masks {model}", progress)
        n_masks, n_frames = 0, 0
        for i, fp in walk:
            batch = ws.read_frame_shard(i)
            ids = np.asarray(generator.masks(batch, ctx))
            if ids.shape != batch.color.shape[:3]:
                raise BadInputError(
                    ctx.scene,
                    None,
                    f"mask model '{model}' returned id maps of shape {ids.shape}, expected {batch.color.shape[:3]}",
                    "fix the mask model so that it gives one id map per frame at the colour raster",
                )
            shards.write_ids(i, ids, fp, attrs={"model": model})
            n_masks += int(sum(len(np.unique(f)) - int((f == 0).any()) for f in ids))
            n_frames += len(ids)
        return {"model": model, "shards": walk.n_shards, "shards_reused": walk.reused,
                "masks_per_frame": round(n_masks / n_frames, 1) if n_frames else None, "output_hash": walk.output_hash}

    return run_stage(ws, stage, config, imported["output_hash"], body, force=force)


def refinement_input(ws: Workspace, cfg: SamRefineConfig) -> str | None:
    """The mask stage's output hash when refinement is on (part of the consensus's input), else None."""
    if not cfg.enabled:
        return None
    return require_done(ws, "consensus", stage_name("masks", cfg.masks))["output_hash"]


def refinement_fingerprint(ws: Workspace, cfg: SamRefineConfig, index: int) -> str | None:
    return ws.mask_shards(cfg.masks).fingerprint(index) if cfg.enabled else None


def refine_shard(ws: Workspace, cfg: SamRefineConfig, index: int, ranked: np.ndarray, shares: np.ndarray,
                 device: str = "auto") -> tuple[np.ndarray, np.ndarray, int]:
    """Refine one consensus shard's ranked labels (R,N,H,W) and shares with the shard's masks.

    Rank 0 takes the refined labels and confidence; where the refinement changed a pixel's label
    its runners-up are cleared (the mask's class is now the pixel's only vote). Returns the new
    (ranked, shares, changed pixel count).
    """
    ids = ws.mask_shards(cfg.masks).ids(index)
    if ids.shape != ranked.shape[1:]:
        raise BadInputError(
            ws.scene,
            None,
            f"masks of '{cfg.masks}' are {ids.shape[1:]} per frame, the consensus {ranked.shape[2:]}",
            f"rerun the mask stage (force=true) for mask model '{cfg.masks}'",
        )
    out = refine_with_masks(ranked[0], shares[0], ids, cfg, device=device, runners_up=ranked[1:])
    changed = out.changed.cpu().numpy()
    ranked, shares = ranked.copy(), shares.copy()
    ranked[0], shares[0] = out.labels.cpu().numpy(), out.confidence.cpu().numpy()
    ranked[1:, changed] = 0
    shares[1:, changed] = 0.0
    return ranked, shares, int(changed.sum())


@stage_kind("masks", section=lambda cfg, spec: cfg.masks.models[spec.model], input_hash=from_stage("import"),
            entries=(SCENE_FILE, FRAMES_DIR, f"{MASKS_DIR}/{{model}}"), code_version=1, gpu=True)
def run_masks(cfg, spec, input_dir, ws: Workspace, force: bool, progress: bool) -> StageOutcome:
    return masks_scene(ws, spec.model, cfg.masks.models[spec.model], force=force, progress=progress)
