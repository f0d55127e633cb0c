"""Mask-guided refinement of the per-pixel consensus (SAM masks sharpen it).

Functional core: consensus labels + confidence and a per-pixel mask-id map in, refined labels and
confidence out. Why: the voting models blur object boundaries and leave speckle (wrong blobs,
bleeding), while class-agnostic masks (SAM) follow the image's edges. Inside a mask whose pixels
mostly agree on one class, every pixel takes that class: boundaries snap to the mask's outline and
speckle inside the object disappears. Masks without a clear majority (a mask spanning two objects)
are left alone, so a bad mask costs little.

All frames of a batch are done at once: each (frame, mask) pair becomes one segment, the votes per
segment and class are one scatter-add over the pixels, and the result is gathered back per pixel.
"""
from __future__ import annotations

from dataclasses import dataclass

from .devices import resolve_device, to_tensor
from .lazy import LazyModule

torch = LazyModule("torch")  # loaded on first use (see lazy.py)

__all__ = ["SamRefineConfig", "refine_with_masks"]


@dataclass
class SamRefineConfig:
    enabled: bool = False  # refine the consensus with the masks of mask model `masks`
    masks: str = "sam"  # name of the mask model (masks.models.<name>) whose mask shards are read
    min_share: float = 0.5  # the mask's dominant class must hold this share of its (weighted) votes
    min_known: float = 0.5  # ... and this share of the mask's pixels must have a known consensus label
    min_area_px: int = 0  # masks smaller than this are left alone
    weight_by_confidence: bool = True  # a pixel votes with its consensus confidence (else 1)
    fill_unknown: bool = True  # unknown pixels inside a refined mask take its class too
    # a pixel takes the mask's class only if some model voted for it there (one of its ranked classes)
    require_vote: bool = True
    keep_confident: float = 0.99  # pixels whose consensus confidence is at least this keep their label (> 1: none do)


@dataclass
class Refined:
    labels: torch.Tensor  # int64, input shape
    confidence: torch.Tensor  # float32, input shape
    changed: torch.Tensor  # bool, pixels whose label the refinement changed
    masks_applied: int  # segments (frame, mask) that imposed their class
    masks_seen: int


def refine_with_masks(
    labels, confidence, mask_ids, cfg: SamRefineConfig, device: str = "auto", runners_up=None
) -> Refined:
    """Refine consensus `labels` ((N,H,W) or (H,W) ints, 0 = unknown) with `mask_ids` (same shape,
    0 = no mask; ids are per frame). `confidence` (same shape, floats in [0,1]) weighs each pixel's
    vote when cfg.weight_by_confidence.

    Per (frame, mask): votes[c] = summed weight of its pixels labelled c (unknown pixels do not
    vote). The mask imposes its dominant class d when votes[d] / sum(votes) >= cfg.min_share, the
    share of known pixels >= cfg.min_known and its area >= cfg.min_area_px. Its pixels then take d
    (unknown ones only if cfg.fill_unknown), except pixels whose own confidence is at least
    cfg.keep_confident, and with cfg.require_vote pixels where no model voted for d: `runners_up`
    ((R,)+shape, the consensus's further ranked classes, 0 = none) says which classes got votes.
    Both keep a mask that swallowed a neighbouring object (SAM under-segments) or spills over an
    edge from overruling what the models saw there. A pixel whose label changes gets the mean confidence
    of the mask's pixels that voted for d. Pixels outside refined masks keep label and confidence.
    """
    dev = resolve_device(device)
    lab = to_tensor(labels, dev, torch.int64, copy=True)
    conf = to_tensor(confidence, dev, torch.float32, copy=True)
    ids = to_tensor(mask_ids, dev, torch.int64, copy=True)
    if cfg.require_vote and runners_up is None:
        raise ValueError("require_vote needs the runners-up (the consensus's ranked classes)")
    others = to_tensor(runners_up, dev, torch.int64, copy=True).reshape(-1, lab.numel()) if cfg.require_vote else None
    if not (lab.shape == conf.shape == ids.shape):
        raise ValueError(
            f"labels {tuple(lab.shape)}, confidence {tuple(conf.shape)} and mask ids {tuple(ids.shape)} must have one "
            "shape"
        )
    if lab.numel() and (int(lab.min()) < 0 or int(ids.min()) < 0):
        raise ValueError("labels and mask ids must be >= 0")
    shape = lab.shape
    if lab.ndim == 2:
        lab, conf, ids = lab[None], conf[None], ids[None]
    n, h, w = lab.shape
    lab, conf, ids = lab.reshape(-1), conf.reshape(-1), ids.reshape(-1)
    inside = torch.nonzero(ids > 0).squeeze(1)
    out_lab, out_conf = lab.clone(), conf.clone()
    changed = torch.zeros_like(lab, dtype=torch.bool)
    if inside.numel() == 0:
        return Refined(out_lab.view(shape), out_conf.view(shape), changed.view(shape), 0, 0)

    frame = inside // (h * w)
    seg_key = frame * (int(ids.max()) + 1) + ids[inside]
    _, seg = torch.unique(seg_key, return_inverse=True)  # segment index per inside pixel
    n_seg = int(seg.max()) + 1
    n_cls = int(lab.max()) + 1
    pl, pc = lab[inside], conf[inside]
    known = pl > 0
    weight = (pc if cfg.weight_by_confidence else torch.ones_like(pc)) * known
    votes = torch.zeros(n_seg * n_cls, dtype=torch.float32, device=dev)
    votes.index_add_(0, seg * n_cls + pl, weight)
    votes = votes.view(n_seg, n_cls)
    votes[:, 0] = 0.0
    total = votes.sum(1)
    best, dominant = votes.max(1)
    area = torch.bincount(seg, minlength=n_seg)
    n_known = torch.bincount(seg, weights=known.to(torch.float32), minlength=n_seg)
    ok = (total > 0) & (best >= cfg.min_share * total) & (n_known >= cfg.min_known * area) & (area >= cfg.min_area_px)

    # mean confidence of the pixels that voted for the dominant class, per segment
    agree = known & (pl == dominant[seg])
    n_agree = torch.bincount(seg, weights=agree.to(torch.float32), minlength=n_seg)
    sum_conf = torch.bincount(seg, weights=(pc * agree).to(torch.float32), minlength=n_seg)
    dom_conf = sum_conf / n_agree.clamp(min=1.0)

    take = ok[seg] & (known | cfg.fill_unknown) & (pc < cfg.keep_confident)
    new = dominant[seg]
    if others is not None:  # the mask's class must be one the models voted for at the pixel
        take &= (new == pl) | (others[:, inside] == new).any(0)
    change = take & (new != pl)
    idx = inside[change]
    out_lab[idx] = new[change]
    out_conf[idx] = dom_conf[seg[change]].to(out_conf.dtype)
    changed[idx] = True
    return Refined(out_lab.view(shape), out_conf.view(shape), changed.view(shape), int(ok.sum()), n_seg)
