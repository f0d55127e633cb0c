"""Per-pixel consensus: weighted voting of several label maps, each in its own label space.

Functional core: integer label maps and label mappings in, unified labels and confidence out.

Each prediction's source class votes, with the prediction's weight, for the unified classes its
mapping row lists (an empty row votes for nothing). Flip test-time augmentation is just another
prediction in the list.

Speed: pixels with the same tuple of source labels (one id per prediction) get the same result,
and a frame has few distinct tuples (hundreds to a few thousand of ~50 k pixels). So we pack each
pixel's tuple into one int64 key, reduce the keys to the U distinct tuples (a bincount when the key
range is small, torch.unique otherwise), vote densely for U x n_classes only, take the winner per
tuple and gather it back to the pixels. Keys that would overflow int64 (many predictions with large
label spaces) are repacked: the tuple prefix folded so far is replaced by its compact index among
the distinct prefixes before the next prediction is folded in.
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from .devices import cpu_threads, resolve_device, to_tensor
from .lazy import LazyModule
from .refine import SamRefineConfig

torch = LazyModule("torch")  # loaded on first use (see lazy.py)

__all__ = ["ConsensusConfig", "Calibration", "vote", "vote_calibrated", "class_counts", "calibrate",
           "dense_mapping", "disagreement", "distinct_tuples", "tuple_disagreement", "keep_clear_majorities",
           "vanishing_classes", "agreement_counts", "reliability_weights"]

# Votes within this fraction of the pixel's total cast weight of the maximum count as tied.
TIE_TOLERANCE = 1e-5
_KEY_LIMIT = 1 << 62  # largest radix product we let a packed key reach
# key ranges up to max(MIN, min(4 x pixels, MAX)) are compacted with a presence table instead of a sort
_DENSE_UNIQUE_MIN, _DENSE_UNIQUE_MAX = 1 << 16, 1 << 24
_VOTE_CHUNK = 1 << 22  # max elements of one (tuples x n_classes) vote block


@dataclass
class ConsensusConfig:
    split: str = "prior"  # a source class standing for k unified classes gives each member: "prior": w x its prior
    # frequency relative to the most frequent member; "share": w/k; "each": w (the public LabelMaker's rule)
    min_support: float = 0.0  # winner's vote / total cast weight below this -> unknown (0)
    min_margin: float = 0.0  # (winner - runner-up) / total below this -> unknown
    min_votes: float = 0.0  # total weight cast at a pixel below this -> unknown
    ranks: int = 3  # classes kept per pixel, best first (lifting votes with all of them, by their shares)
    calibrate: bool = False  # learn per scene what each model's classes mean (see `calibrate`), then vote by
    # likelihood; false: the plain weighted vote
    calibration_rounds: int = 1  # EM rounds: the first counts against the plain vote, each next one against
    # the previous round's calibrated vote
    calibration_strength: float = 100.0  # pseudo-pixels per unified class that keep the label mapping's own meaning
    calibration_prior: float = 0.0  # class prior = (counted class frequency) ** this; 0 = uniform (best for mIoU)
    calibration_scope: str = "all"  # all: every pixel takes the calibrated vote; weak: only pixels where the
    # plain vote has no clear majority (winner's share <= calibration_weak_support), the others keep it
    calibration_weak_support: float = 0.5
    calibration_guard: float = 0.5  # > 0: the scene's calibration is rejected (plain vote) when a class that wins at
    # least calibration_guard_min_share of the pixels in the plain vote keeps less than this fraction of them
    calibration_guard_min_share: float = 0.002
    calibration_temperature: float = 1.0  # the calibrated vote's shares (what lifting weighs the ranked classes by) are
    # softmax(log posterior / this): > 1 keeps more of the runners-up; the winner is the same
    calibration_keep_meaning: bool = False  # a model's class is never more evidence for another class than for one
    # it stands for (when the scene has one): calibration may discount a model's word, not turn it into another
    reliability: str = "none"  # none | model | frame: weigh each model's vote by its accuracy in this scene (model) or
    # in this scene and frame (frame), measured where the other models agree (see `agreement_counts`)
    reliability_support: float = 0.99  # a reference pixel: the other models' winner holds this share of their votes
    reliability_pseudo_pixels: float = 5000.0  # a frame's accuracy is shrunk towards the model's with this many pixels
    device: str = "auto"  # auto | cpu | cuda
    cpu_threads: int = 1  # torch CPU threads while voting (0 = torch's default); not hashed: results do not
    # depend on it
    workers: int = 2  # frame slices of a shard voted at once (threads); speed only, not hashed
    sam_refine: SamRefineConfig = field(default_factory=SamRefineConfig)  # snap labels to SAM masks (consensus stage)


def _as_long(x: Any, device: torch.device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=torch.int64)
    a = np.asarray(x)
    if a.dtype.kind not in "iub":
        raise ValueError(f"label maps must hold integers, got dtype {a.dtype}")
    return to_tensor(a, device, torch.int64)


def _mapping_arrays(
    mapping: Any, index: int, n_classes: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    def as_long(x: Any) -> torch.Tensor:
        if isinstance(x, torch.Tensor):
            return x.to(device=device, dtype=torch.int64).reshape(-1)
        return torch.from_numpy(np.array(x, dtype=np.int64).reshape(-1)).to(device)  # small: copy

    offsets, targets = as_long(mapping.offsets), as_long(mapping.targets)
    if offsets.ndim != 1 or offsets.numel() < 1 or int(offsets[0]) != 0 or int(offsets[-1]) > targets.numel() \
            or bool((offsets[1:] < offsets[:-1]).any()):
        raise ValueError(f"mapping {index}: offsets must be non-decreasing CSR row pointers starting at 0")
    used = targets[: int(offsets[-1])]
    if used.numel() and (int(used.min()) < 1 or int(used.max()) >= n_classes):
        raise ValueError(f"mapping {index}: unified target ids must lie in 1..{n_classes - 1} "
                         f"(found {int(used.min())}..{int(used.max())})")
    return offsets, targets


def dense_mapping(offsets: torch.Tensor, targets: torch.Tensor, n_classes: int, split: str,
                  prior: torch.Tensor | None = None) -> torch.Tensor:
    """(S, n_classes) float32 matrix: row s = the votes one unit of weight on source class s casts."""
    n_src = offsets.numel() - 1
    counts = offsets[1:] - offsets[:-1]
    rows = torch.repeat_interleave(torch.arange(n_src, device=offsets.device), counts)
    cols = targets[: int(offsets[-1])]
    if split == "prior":
        p = prior.to(device=offsets.device, dtype=torch.float32)[cols].clamp(min=1e-12)
        row_max = torch.zeros(n_src, dtype=torch.float32, device=offsets.device).scatter_reduce_(0, rows, p, "amax")
        vals = p / row_max[rows]
    elif split == "share":
        vals = (1.0 / counts.clamp(min=1).to(torch.float32))[rows]
    else:
        vals = torch.ones(rows.numel(), dtype=torch.float32, device=offsets.device)
    dense = torch.zeros(n_src * n_classes, dtype=torch.float32, device=offsets.device)
    dense.index_put_((rows * n_classes + cols,), vals, accumulate=True)
    return dense.view(n_src, n_classes)


def _compact(key: torch.Tensor, radix: int) -> tuple[torch.Tensor, int]:
    """Replace keys in [0, radix) by their rank among the distinct keys; returns (ranks, count)."""
    if radix <= max(_DENSE_UNIQUE_MIN, min(4 * key.numel(), _DENSE_UNIQUE_MAX)):
        present = torch.zeros(radix, dtype=torch.int32, device=key.device)
        present[key] = 1
        rank = torch.cumsum(present, 0, dtype=torch.int32)
        count = int(rank[-1])
        return rank.index_select(0, key).to(torch.int64) - 1, count
    uniq, inverse = torch.unique(key, sorted=True, return_inverse=True)
    return inverse, int(uniq.numel())


def vote(predictions: Sequence[Any], mappings: Sequence[Any], weights: Sequence[float], n_classes: int,
         cfg: ConsensusConfig | None = None, prior: Sequence[float] | None = None,
         ranks: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted per-pixel vote of several predictions into the unified label space.

    predictions: integer arrays/tensors, all of one shape ((H,W) or (N,H,W)), each in its own source
        space; mappings: one per prediction, any object with CSR `.offsets` (S+1,) and `.targets`
        (unified ids >= 1) -- source id s votes for targets[offsets[s]:offsets[s+1]];
        weights: one float >= 0 per prediction; n_classes: size of the unified space (id 0 = unknown).

    Votes: a source class standing for k unified classes gives, with split="prior", each member the
    weight times the member's `prior` relative to the most frequent member's (a coarse ADE20K "wall"
    then votes fully for wall and a little for shower wall, so it still ties with -- and by the tie
    rule beats -- one model's vote for a rarer class); with split="share" weight/k to each; with
    split="each" the full weight to each. `prior` ((n_classes,) frequencies, e.g. labels.class_prior()) is needed
    for "prior" only. The total cast weight at a pixel is the sum of
    the weights of the predictions whose class maps to something (in both modes), so the winner's
    share is in [0, 1].

    Tie rule: the winner is the lowest unified id among the classes whose vote is within
    TIE_TOLERANCE x total of the maximum (so float rounding never decides). A tie has a margin of ~0,
    so min_margin > 0 turns ties into unknown.

    A pixel is unknown (label 0, confidence 0) when no weight is cast there, or the total is below
    cfg.min_votes, or the winner's share is below cfg.min_support, or (winner - runner-up) / total is
    below cfg.min_margin.

    Returns (labels int64, confidence float32 = winner's share of the total) of the predictions'
    shape, on the device used (cfg.device). With ranks=R > 1 both get a leading axis of size R:
    rank 0 is the winner as above, ranks 1.. the next classes by vote (same tie rule) with their
    shares, 0 where the pixel is unknown or no further class got a vote -- so that lifting can keep
    the whole vote of a close call instead of the winner alone. Raises ValueError for a source id outside its mapping's
    range (naming the id and the prediction's index), mismatched shapes or bad weights.
    """
    cfg = cfg or ConsensusConfig()
    with cpu_threads(cfg.cpu_threads):
        return _decide(_plain_scorer(predictions, mappings, weights, n_classes, cfg, prior), cfg, ranks)


@dataclass
class _Scorer:
    """The distinct tuples of source ids of a vote and a function scoring a range of them."""

    shape: tuple  # the predictions' shape
    inverse: torch.Tensor | None  # (pixels,) tuple index per pixel; None when there is nothing to vote on
    n_unique: int
    tuple_ids: list  # per prediction the (U,) source id of each tuple
    sizes: list  # per prediction the size of its source label space
    classes: torch.Tensor  # (A,) unified ids scored, ascending
    # scores(start, stop) -> (votes (stop-start, A) >= 0, total (stop-start,) cast weight)
    scores: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]] | None
    device: torch.device


def _plain_scorer(predictions, mappings, weights, n_classes: int, cfg: ConsensusConfig, prior) -> _Scorer:
    if cfg.split not in ("prior", "share", "each"):
        raise ValueError(f"consensus split must be 'prior', 'share' or 'each', got {cfg.split!r}")
    if cfg.split == "prior":
        if prior is None or len(prior) != n_classes:
            raise ValueError(f"split='prior' needs a prior of length n_classes={n_classes}")
        prior = torch.as_tensor(np.asarray(prior, dtype=np.float32))
    device = resolve_device(cfg.device)
    flat, shape, maps, sizes, w = _prepare(predictions, mappings, weights, n_classes, device)
    n_classes = int(n_classes)
    none = torch.zeros(0, dtype=torch.int64, device=device)
    if flat[0].numel() == 0:
        return _Scorer(shape, None, 0, [], sizes, none, None, device)
    inverse, n_unique, tuple_ids = _distinct_tuples(flat, sizes, device)

    # Vote only over the unified classes some present source class stands for (ascending ids, so
    # the tie rule "lowest id first" is kept), usually a few dozen of the n_classes.
    dense = [dense_mapping(off, tgt, n_classes, cfg.split, prior) for off, tgt in maps]
    active = torch.zeros(n_classes, dtype=torch.bool, device=device)
    for ids, mat in zip(tuple_ids, dense):
        active |= (mat[torch.unique(ids)] > 0).any(0)
    classes = torch.nonzero(active).squeeze(1)
    if classes.numel() == 0:  # nothing maps to any class: all unknown
        return _Scorer(shape, None, 0, [], sizes, none, None, device)
    dense = [mat[:, classes] for mat in dense]
    nonempty = [(off[1:] > off[:-1]).to(torch.float32) for off, _ in maps]

    def scores(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        votes = torch.zeros((stop - start, int(classes.numel())), dtype=torch.float32, device=device)
        return _add_rows(votes, start, stop, tuple_ids, dense, nonempty, w)

    return _Scorer(shape, inverse, n_unique, tuple_ids, sizes, classes, scores, device)


def _add_rows(
    out: torch.Tensor, start: int, stop: int, tuple_ids, tables, nonempty, weights
) -> tuple[torch.Tensor, torch.Tensor]:
    """out += sum over predictions of weight x its table's row for each tuple's source id (tuples
    start..stop); returns (out, the cast weight per tuple: predictions whose id maps somewhere)."""
    total = torch.zeros(stop - start, dtype=torch.float32, device=out.device)
    for ids, table, ne, wi in zip(tuple_ids, tables, nonempty, weights):
        if wi == 0.0:
            continue
        sel = ids[start:stop]
        out.add_(table[sel], alpha=wi)
        total.add_(ne[sel], alpha=wi)
    return out, total


def checked_vote_arguments(predictions: Sequence[Any], mappings: Sequence[Any], weights: Sequence[float],
                           n_classes: int) -> tuple[list[float], int]:
    """A vote's counts and weights checked (ValueError naming what is wrong): (weights as floats, n_classes)."""
    n_pred = len(predictions)
    if n_pred == 0:
        raise ValueError("vote needs at least one prediction")
    if len(mappings) != n_pred or len(weights) != n_pred:
        raise ValueError(f"got {n_pred} predictions, {len(mappings)} mappings and {len(weights)} weights; "
                         "need one mapping and one weight per prediction")
    w = [float(x) for x in weights]
    if any(not np.isfinite(x) or x < 0 for x in w):
        raise ValueError(f"prediction weights must be finite and >= 0, got {w}")
    n_classes = int(n_classes)
    if n_classes < 2:
        raise ValueError("n_classes must be >= 2 (id 0 is unknown)")
    return w, n_classes


def _prepare(predictions: Sequence[Any], mappings: Sequence[Any], weights: Sequence[float], n_classes: int,
             device: torch.device):
    """Checked inputs of a vote: (flat id tensors, shape, CSR mappings, source space sizes, weights)."""
    w, n_classes = checked_vote_arguments(predictions, mappings, weights, n_classes)
    preds = [_as_long(p, device) for p in predictions]
    shape = preds[0].shape
    for i, p in enumerate(preds):
        if p.shape != shape:
            raise ValueError(f"prediction {i} has shape {tuple(p.shape)}, prediction 0 has {tuple(shape)}")
    maps = [_mapping_arrays(m, i, n_classes, device) for i, m in enumerate(mappings)]
    sizes = [int(off.numel()) - 1 for off, _ in maps]
    flat = [p.reshape(-1) for p in preds]
    for i, (p, size) in enumerate(zip(flat, sizes)):
        if p.numel() == 0:
            continue
        lo, hi = torch.aminmax(p)
        lo, hi = int(lo), int(hi)
        if lo < 0 or hi >= size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"prediction {i}: source label id {bad} is outside its label mapping "
                             f"(which covers ids 0..{size - 1})")

    return flat, shape, maps, sizes, w


def _distinct_tuples(flat: list[torch.Tensor], sizes: list[int], device: torch.device):
    """The distinct tuples of source ids over the pixels: (inverse (n,) tuple index per pixel,
    count U, per prediction the (U,) ids of each tuple)."""
    n = flat[0].numel()
    # Fold the per-prediction ids into one key per pixel, repacking before it could overflow.
    key, radix = flat[0], sizes[0]
    for p, size in zip(flat[1:], sizes[1:]):
        if radix * size >= _KEY_LIMIT:
            key, radix = _compact(key, radix)
        key = key * size + p
        radix *= size
    inverse, n_unique = _compact(key, radix)
    # One representative pixel per distinct tuple (all pixels of a tuple hold the same ids).
    rep = torch.empty(n_unique, dtype=torch.int64, device=device)
    rep.scatter_(0, inverse, torch.arange(n, device=device))
    return inverse, n_unique, [p[rep] for p in flat]


def _decide(scorer: _Scorer, cfg: ConsensusConfig, ranks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Winner (+ runners-up) per distinct tuple from the scorer's votes, with the tie and unknown
    rules of `vote`, gathered back to the pixels."""
    if scorer.scores is None:
        return _empty(scorer.shape, scorer.device, ranks)
    scores, n_unique, inverse = scorer.scores, scorer.n_unique, scorer.inverse
    classes, shape = scorer.classes, scorer.shape
    device = inverse.device
    n_active = int(classes.numel())
    padded = n_active < 2
    labels_u = torch.zeros((ranks, n_unique), dtype=torch.int64, device=device)
    conf_u = torch.zeros((ranks, n_unique), dtype=torch.float32, device=device)
    chunk = max(1, _VOTE_CHUNK // (n_active + 1))
    for start in range(0, n_unique, chunk):
        stop = min(n_unique, start + chunk)
        votes, total = scores(start, stop)
        if padded:  # topk needs two columns
            votes = torch.cat([votes, torch.zeros_like(votes[:, :1])], 1)
        top = torch.topk(votes, 2, dim=1).values
        best, second = top[:, 0], top[:, 1]
        tied = votes >= (best - TIE_TOLERANCE * total).unsqueeze(1)
        winner = torch.argmax(tied.to(torch.uint8), dim=1)  # first (lowest id) of the tied maxima
        safe_total = total.clamp(min=torch.finfo(torch.float32).tiny)
        support = best / safe_total
        margin = (best - second) / safe_total
        unknown = (total <= 0) | (best <= 0) | (total < cfg.min_votes) | (support < cfg.min_support) \
            | (margin < cfg.min_margin)
        winner_class = classes[winner.clamp(max=n_active - 1)]
        labels_u[0, start:stop] = torch.where(unknown, torch.zeros_like(winner), winner_class)
        conf_u[0, start:stop] = torch.where(unknown, torch.zeros_like(support), support.clamp(max=1.0))
        rest, pick = votes, winner
        for r in range(1, ranks):
            rest = rest.scatter(1, pick.unsqueeze(1), -1.0)
            best_r = rest.max(1).values
            pick = torch.argmax((rest >= (best_r - TIE_TOLERANCE * total).unsqueeze(1)).to(torch.uint8), dim=1)
            none = unknown | (best_r <= 0) | (pick >= n_active)
            labels_u[r, start:stop] = torch.where(none, torch.zeros_like(pick), classes[pick.clamp(max=n_active - 1)])
            conf_u[r, start:stop] = torch.where(none, torch.zeros_like(best_r), (best_r / safe_total).clamp(0.0, 1.0))

    if ranks == 1:
        return labels_u[0, inverse].view(shape), conf_u[0, inverse].view(shape)
    return labels_u[:, inverse].view((ranks, *shape)), conf_u[:, inverse].view((ranks, *shape))


def _empty(shape, device, ranks: int) -> tuple[torch.Tensor, torch.Tensor]:
    full = tuple(shape) if ranks == 1 else (ranks, *shape)
    return torch.zeros(full, dtype=torch.int64, device=device), torch.zeros(full, dtype=torch.float32, device=device)


# -- calibrated voting ----------------------------------------------------------------------------
# A plain vote trusts every model's class to mean what its label mapping says. Real models err
# systematically (one calls lamps "bed", another calls small things "wall"), and those errors are
# scene-wide. So, in the spirit of Dawid & Skene (1979), we estimate per scene, for every
# prediction, how probable its source class s is under each unified class c, with the classes of
# the pixels taken from the plain vote (E-step, `class_counts`), blend that with the mapping's own
# meaning (M-step, `calibrate`), and vote again by likelihood: a pixel takes the class c maximising
# log P(c) + sum_m w_m log P_m(s_m | c) over the classes the scene has. More rounds count against
# the calibrated vote.


@dataclass
class Calibration:
    """What each prediction's source classes mean in this scene."""

    classes: np.ndarray  # (A,) the unified ids the scene shows, ascending
    log_likelihood: list  # per prediction an (S_m, A) float32 array: log P(source id s | unified class)
    log_prior: np.ndarray  # (A,) float32 log P(class) (up to a constant)

    def fingerprint(self) -> str:
        """A hash of the tables: what the consensus shards voted with."""
        blob = b"".join(np.ascontiguousarray(a).tobytes() for a in [self.classes, self.log_prior, *self.log_likelihood])
        return hashlib.sha256(blob).hexdigest()[:16]


def calibrate(counts: Sequence[np.ndarray], wins: np.ndarray, mappings: Sequence[Any], n_classes: int,
              cfg: ConsensusConfig, prior: Sequence[float] | None = None) -> Calibration:
    """Likelihood tables from co-occurrence counts (see `class_counts`): the M-step.

    P_m(s | c) = (count_m(s, c) + k * P0_m(s | c)) / (count_m(c) + k), k = cfg.calibration_strength,
    where P0 is the label mapping's own meaning (s votes for c as in `vote`, normalised over s, plus
    a little for every s), so classes with few pixels keep what the mapping says.
    """
    if len(counts) != len(mappings):
        raise ValueError(f"got {len(counts)} count tables and {len(mappings)} mappings")
    cpu = torch.device("cpu")
    prior_t = None if prior is None else torch.as_tensor(np.asarray(prior, dtype=np.float32))
    seen = np.asarray(wins, dtype=np.int64).copy()
    if seen.shape != (n_classes,):
        raise ValueError(f"wins must have shape ({n_classes},), got {seen.shape}")
    seen[0] = 0
    classes = np.flatnonzero(seen > 0)  # the classes the scene shows: those that win somewhere
    k = float(cfg.calibration_strength)
    if k < 0:
        raise ValueError("calibration_strength must be >= 0")
    tables = []
    for i, (c, mapping) in enumerate(zip(counts, mappings)):
        off, tgt = _mapping_arrays(mapping, i, n_classes, cpu)
        if np.shape(c) != (off.numel() - 1, n_classes):
            raise ValueError(f"count table {i} has shape {np.shape(c)}, its mapping needs "
                             f"{(off.numel() - 1, n_classes)}")
        meaning = dense_mapping(off, tgt, n_classes, cfg.split, prior_t).numpy()[:, classes].astype(np.float64)
        means = meaning > 0  # (S, A): the scene's classes each source class stands for
        meaning += 1e-3 * max(float(meaning.max(initial=0.0)), 1.0)
        meaning /= meaning.sum(0, keepdims=True)
        counted = np.asarray(c, dtype=np.float64)[:, classes]
        likelihood = (counted + k * meaning) / (counted.sum(0, keepdims=True) + k)
        if cfg.calibration_keep_meaning:  # s is at most as much evidence for another class as for its own
            own = np.where(means, likelihood, 0.0).max(1, keepdims=True)
            likelihood = np.where(means.any(1, keepdims=True) & ~means, np.minimum(likelihood, own), likelihood)
        tables.append(np.log(np.maximum(likelihood, 1e-30)).astype(np.float32))
    mass = sum(np.asarray(c, dtype=np.float64)[:, classes].sum(0) for c in counts) + 1.0
    log_prior = (float(cfg.calibration_prior) * np.log(mass / mass.sum())).astype(np.float32)
    return Calibration(classes=classes.astype(np.int64), log_likelihood=tables, log_prior=log_prior)


def vote_calibrated(predictions: Sequence[Any], mappings: Sequence[Any], weights: Sequence[float], n_classes: int,
                    calibration: Calibration, cfg: ConsensusConfig | None = None,
                    ranks: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Like `vote`, but each pixel's class maximises sum_m w_m log P_m(s_m | c) over the
    calibration's classes; the shares are the posterior probabilities (uniform class prior). A
    pixel where no prediction's class maps to anything is unknown, as in `vote`; so are pixels
    failing min_support / min_margin (on the posterior) or min_votes (on the cast weight)."""
    cfg = cfg or ConsensusConfig()
    with cpu_threads(cfg.cpu_threads):
        return _decide(_calibrated_scorer(predictions, mappings, weights, n_classes, calibration, cfg), cfg, ranks)


def _calibrated_scorer(predictions, mappings, weights, n_classes: int, calibration: Calibration,
                       cfg: ConsensusConfig) -> _Scorer:
    device = resolve_device(cfg.device)
    flat, shape, maps, sizes, w = _prepare(predictions, mappings, weights, n_classes, device)
    if len(calibration.log_likelihood) != len(flat):
        raise ValueError(f"the calibration covers {len(calibration.log_likelihood)} predictions, got {len(flat)}")
    for i, (table, size) in enumerate(zip(calibration.log_likelihood, sizes)):
        if np.shape(table) != (size, len(calibration.classes)):
            raise ValueError(f"calibration table {i} has shape {np.shape(table)}, expected "
                             f"{(size, len(calibration.classes))}")
    classes = torch.as_tensor(np.asarray(calibration.classes, dtype=np.int64), device=device)
    if flat[0].numel() == 0 or classes.numel() == 0:
        return _Scorer(shape, None, 0, [], sizes, classes, None, device)
    inverse, n_unique, tuple_ids = _distinct_tuples(flat, sizes, device)
    tables = [torch.as_tensor(np.asarray(t, dtype=np.float32), device=device) for t in calibration.log_likelihood]
    nonempty = [(off[1:] > off[:-1]).to(torch.float32) for off, _ in maps]

    log_prior = torch.as_tensor(np.asarray(calibration.log_prior, dtype=np.float32), device=device)
    temperature = float(cfg.calibration_temperature)
    if temperature <= 0:
        raise ValueError("consensus.calibration_temperature must be > 0")

    def scores(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        prior_rows = log_prior.expand(stop - start, -1).clone()
        log_post, total = _add_rows(prior_rows, start, stop, tuple_ids, tables, nonempty, w)
        return torch.softmax(log_post / temperature, dim=1) * total.unsqueeze(1), total

    return _Scorer(shape, inverse, n_unique, tuple_ids, sizes, classes, scores, device)


def class_counts(predictions: Sequence[Any], mappings: Sequence[Any], weights: Sequence[float], n_classes: int,
                 cfg: ConsensusConfig, prior: Sequence[float] | None = None,
                 calibration: Calibration | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """The E-step. Returns (per prediction an (S_m, n_classes) float64 table whose entry (s, c)
    counts the pixels where the prediction says s and the vote -- plain, or calibrated when a
    calibration is given -- says c, and the (n_classes,) int64 count of pixels each class wins).
    Pixels where nothing is cast count nowhere.

    Hard winners, not the vote's shares: with shares (textbook Dawid-Skene) a model's systematic
    confusion becomes a class of its own -- where one model calls walls "cabinet", a phantom
    "cabinet" that the other models "call wall" wins the walls (2D mIoU fell from 0.75 to 0.57 on a
    synthetic room, with or without a class prior); counting winners keeps the classes the plain
    vote already believes in.
    """
    with cpu_threads(cfg.cpu_threads):
        return _class_counts(predictions, mappings, weights, n_classes, cfg, prior, calibration)


def _class_counts(predictions, mappings, weights, n_classes: int, cfg: ConsensusConfig, prior,
                  calibration) -> tuple[list[np.ndarray], np.ndarray]:
    if calibration is not None:
        scorer = _calibrated_scorer(predictions, mappings, weights, n_classes, calibration, cfg)
    else:
        scorer = _plain_scorer(predictions, mappings, weights, n_classes, cfg, prior)
    sizes = scorer.sizes
    out = [np.zeros((size, int(n_classes)), np.float64) for size in sizes]
    wins = np.zeros(int(n_classes), np.int64)
    if scorer.scores is None:
        return out, wins
    n_active = int(scorer.classes.numel())
    tables = [torch.zeros((size * n_active,), dtype=torch.float64, device=scorer.device) for size in sizes]
    won = torch.zeros(n_active, dtype=torch.float64, device=scorer.device)
    multiplicity = torch.bincount(scorer.inverse, minlength=scorer.n_unique).to(torch.float64)
    chunk = max(1, _VOTE_CHUNK // (n_active + 1))
    for start in range(0, scorer.n_unique, chunk):
        stop = min(scorer.n_unique, start + chunk)
        votes, total = scorer.scores(start, stop)
        best = votes.max(1).values
        tied = votes >= (best - TIE_TOLERANCE * total).unsqueeze(1)
        winner = torch.argmax(tied.to(torch.uint8), dim=1)  # the tie rule of `vote`
        mult = multiplicity[start:stop] * ((total > 0) & (best > 0))
        for ids, table in zip(scorer.tuple_ids, tables):
            table.index_add_(0, ids[start:stop] * n_active + winner, mult)
        won.index_add_(0, winner, mult)
    tables = [t.view(size, n_active) for t, size in zip(tables, sizes)]
    cols = scorer.classes.cpu().numpy()
    for table, o in zip(tables, out):
        o[:, cols] = table.cpu().numpy()
    wins[cols] = np.rint(won.cpu().numpy()).astype(np.int64)
    return out, wins


def _compatible(a: Any, b: Any, n_classes: int) -> np.ndarray:
    """(S_a, S_b) bool: whether source class i of mapping a and j of mapping b share a unified class."""
    def member(m) -> np.ndarray:
        offsets, targets = np.asarray(m.offsets, dtype=np.int64), np.asarray(m.targets, dtype=np.int64)
        rows = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
        out = np.zeros((len(offsets) - 1, n_classes), dtype=np.float32)
        out[rows, targets] = 1.0
        return out

    return (member(a) @ member(b).T) > 0


_compatible_cached = functools.lru_cache(maxsize=64)(_compatible)


def disagreement(predictions: Sequence[np.ndarray], mappings: Sequence[Any], n_classes: int) -> tuple[int, int]:
    """How often the models contradict each other: (pixels where some two models name classes that
    share no unified class, pixels where at least two models name a class that maps somewhere).

    A coarse class agrees with each of its members (ADE20K "cabinet" with "kitchen cabinet"); a
    class that maps to nothing (sky, unlabelled) takes no part. predictions: one integer array per
    model, all of one shape, in the source space of its mapping (CSR `.offsets`, `.targets`).
    """
    if len(predictions) < 2:
        return 0, 0
    # Each distinct tuple of ids (a frame has few) is judged once and counted by its pixels.
    flat = [np.asarray(p).reshape(-1) for p in predictions]
    sizes = [len(np.asarray(m.offsets)) - 1 for m in mappings]
    for p, size in zip(flat, sizes):
        if p.size and (int(p.min()) < 0 or int(p.max()) >= size):
            raise IndexError(f"label id outside 0..{size - 1} of its mapping")
    tuple_ids, inverse, n_unique = distinct_tuples(flat, sizes)
    return tuple_disagreement(tuple_ids, np.bincount(inverse, minlength=n_unique), mappings, n_classes)


def tuple_disagreement(preds: Sequence[np.ndarray], count: np.ndarray, mappings: Sequence[Any],
                       n_classes: int) -> tuple[int, int]:
    """`disagreement` over distinct tuples: per prediction the (U,) ids of each tuple, and the (U,)
    pixels holding it (the tuples may repeat: their counts add up)."""
    if len(preds) < 2:
        return 0, 0
    known = [np.diff(np.asarray(m.offsets))[p] > 0 for p, m in zip(preds, mappings)]
    contradict = np.zeros(preds[0].shape, dtype=bool)
    for i in range(len(preds)):
        for j in range(i + 1, len(preds)):
            try:  # label mappings are hashable (cached tables); other mapping objects may not be
                table = _compatible_cached(mappings[i], mappings[j], n_classes)
            except TypeError:
                table = _compatible(mappings[i], mappings[j], n_classes)
            both = known[i] & known[j]
            contradict |= both & ~table[preds[i], preds[j]]
    compared = np.sum(known, axis=0) >= 2
    return int(count[contradict].sum()), int(count[compared].sum())


_INT32 = 1 << 31  # keys and ranks below this are kept in int32


def _compact_keys(key: np.ndarray, radix: int) -> tuple[np.ndarray, int]:
    """Keys in [0, radix) replaced by their rank among the distinct keys; (ranks, count)."""
    if radix <= max(_DENSE_UNIQUE_MIN, min(4 * key.size, _DENSE_UNIQUE_MAX)):
        present = np.zeros(radix, bool)
        present[key] = True
        rank = np.cumsum(present, dtype=np.int32)
        rank -= 1
        del present
        return rank[key], int(rank[-1]) + 1
    uniq, inverse = np.unique(key, return_inverse=True)
    return inverse.reshape(-1).astype(np.int32 if uniq.size < _INT32 else np.int64, copy=False), int(uniq.size)


def distinct_tuples(flat: Sequence[np.ndarray], sizes: Sequence[int]) -> tuple[list[np.ndarray], np.ndarray, int]:
    """The distinct tuples (one id per prediction) over the pixels of flat numpy label maps whose ids
    lie in 0..sizes[i]-1: (per prediction the (U,) int64 ids of each tuple, (P,) each pixel's tuple,
    U). The numpy vote and `disagreement` judge each tuple once instead of each pixel."""
    n = flat[0].size
    if n == 0:
        return [np.zeros(0, np.int64) for _ in flat], np.zeros(0, np.int64), 0
    # Each prediction's ids replaced by their rank among the ids it uses (an order-keeping map), so
    # the packed keys stay small: the distinct tuples and their order are those of the raw ids.
    # int32 keys while the packed radix allows (half the memory traffic of int64; same integers).
    dense_ids = []
    for p, size in zip(flat, sizes):
        present = np.zeros(size, bool)
        present[p] = True
        rank = np.cumsum(present, dtype=np.int32 if size < _INT32 else np.int64)
        rank -= 1
        dense_ids.append((rank[p], int(rank[-1]) + 1))
    key, radix = dense_ids[0]
    for p, size in dense_ids[1:]:
        if radix * size >= _KEY_LIMIT:
            key, radix = _compact_keys(key, radix)
        if radix * size >= _INT32 and key.dtype != np.int64:
            key = key.astype(np.int64)
        key = key * size
        key += p
        radix *= size
    del dense_ids
    inverse, n_unique = _compact_keys(key, radix)
    del key
    rep = np.empty(n_unique, np.int64)
    rep[inverse] = np.arange(n)
    return [p[rep].astype(np.int64) for p in flat], inverse, n_unique


def keep_clear_majorities(plain: tuple[torch.Tensor, torch.Tensor], calibrated: tuple[torch.Tensor, torch.Tensor],
                          weak_support: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Ranked (labels, shares) of the calibrated vote where the plain vote is weak (its winner's
    share <= weak_support, e.g. no model majority), of the plain vote elsewhere: calibration then
    settles disagreements and ties but never overturns a clear plain majority. Both inputs have the
    leading ranks axis of `vote(..., ranks=R)` (R > 1)."""
    weak = plain[1][0] <= weak_support + TIE_TOLERANCE
    return torch.where(weak, calibrated[0], plain[0]), torch.where(weak, calibrated[1], plain[1])


def vanishing_classes(plain_wins: np.ndarray, calibrated_wins: np.ndarray, keep: float,
                      min_share: float) -> dict[int, float]:
    """Classes the plain vote gives at least `min_share` of the decided pixels that keep less than
    `keep` of their pixels after calibration: {class id: calibrated / plain pixels}. A calibration
    that makes a real class vanish (one model's frequent confusion learnt as the truth) is suspect."""
    plain = np.asarray(plain_wins, dtype=np.float64).copy()
    cal = np.asarray(calibrated_wins, dtype=np.float64).copy()
    plain[0] = cal[0] = 0
    total = plain.sum()
    if total <= 0:
        return {}
    big = np.flatnonzero(plain >= min_share * total)
    ratio = cal[big] / plain[big]
    return {int(c): round(float(r), 4) for c, r in zip(big, ratio) if r < keep}


# -- reliability weights ----------------------------------------------------------------------------
# A gentler alternative to calibration: one accuracy per model (or per model and frame), no class
# remapping. Where the other models agree, we count how often this model agrees with them; its vote
# weight is then the log-odds of that accuracy against chance among the scene's K classes (the
# "one-coin" Dawid-Skene model): a model that agrees 90 % of the time outweighs one at 60 %, one
# at chance gets no say. A class can only win where some model says it, so no class is invented,
# and a weight changes the outcome only where the models disagree.


def agreement_counts(predictions: Sequence[Any], mappings: Sequence[Any], groups: Sequence[int], n_classes: int,
                     cfg: ConsensusConfig,
                     prior: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per prediction and frame, against the plain vote of the predictions of the OTHER groups
    (models; a model's flip-TTA prediction is in its group) at pixels where that vote is clear
    (winner's share >= cfg.reliability_support): (reference pixels (P, N), pixels where the
    prediction's class stands for the reference class (P, N), reference pixels per unified class
    (n_classes,)). predictions: (N,H,W) each. A prediction without other groups counts nothing."""
    device = resolve_device(cfg.device)
    n_pred = len(predictions)
    n_frames = int(np.shape(predictions[0])[0])
    ref = np.zeros((n_pred, n_frames), np.int64)
    agree = np.zeros((n_pred, n_frames), np.int64)
    per_class = np.zeros(int(n_classes), np.int64)
    prior_t = None if prior is None else torch.as_tensor(np.asarray(prior, dtype=np.float32))
    for g in sorted(set(groups)):
        mine = [i for i in range(n_pred) if groups[i] == g]
        others = [i for i in range(n_pred) if groups[i] != g]
        if not others:
            continue
        labels, conf = vote([predictions[i] for i in others], [mappings[i] for i in others], [1.0] * len(others),
                            n_classes, cfg, prior=prior)
        is_ref = (labels > 0) & (conf >= cfg.reliability_support)
        per_class += torch.bincount(labels[is_ref], minlength=int(n_classes)).cpu().numpy()
        for i in mine:
            off, tgt = _mapping_arrays(mappings[i], i, n_classes, device)
            stands_for = dense_mapping(off, tgt, n_classes, cfg.split, prior_t) > 0
            pred = _as_long(predictions[i], device)
            hit = stands_for[pred, labels] & is_ref
            ref[i] = is_ref.flatten(1).sum(1).cpu().numpy()
            agree[i] = hit.flatten(1).sum(1).cpu().numpy()
    return ref, agree, per_class


def reliability_weights(ref: np.ndarray, agree: np.ndarray, per_class: np.ndarray, mode: str,
                        pseudo_pixels: float = 5000.0, min_class_pixels: int = 1) -> np.ndarray:
    """(P, N) vote multipliers from `agreement_counts` summed over a scene: w = log((K-1) p / (1-p)),
    p the accuracy clipped to [1/K, 0.995] (K: classes with reference pixels), per model ("model")
    or per model and frame ("frame", p shrunk towards the model's by `pseudo_pixels`), divided by
    the mean of the models' weights (so they average 1). Predictions without counts get 1."""
    if mode not in ("model", "frame"):
        raise ValueError(f"consensus.reliability must be 'none', 'model' or 'frame', got {mode!r}")
    ref = np.asarray(ref, dtype=np.float64)
    agree = np.asarray(agree, dtype=np.float64)
    k = max(2, int((np.asarray(per_class)[1:] >= min_class_pixels).sum()))
    p_model = (agree.sum(1) + 1.0) / (ref.sum(1) + 2.0)
    p = np.repeat(p_model[:, None], ref.shape[1], 1)
    if mode == "frame":
        p = (agree + pseudo_pixels * p_model[:, None]) / (ref + pseudo_pixels)

    def log_odds(q):
        q = np.clip(q, 1.0 / k, 0.995)
        return np.log((k - 1) * q / (1.0 - q))

    scale = log_odds(p_model).mean()
    w = np.maximum(log_odds(p), 0.0) / scale if scale > 0 else np.ones_like(p)
    w[ref.sum(1) == 0] = 1.0
    return w.astype(np.float64)
