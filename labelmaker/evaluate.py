"""Semantic segmentation scores: confusion matrices, IoU, plots.

Works the same for 2D label maps (any shape, flattened) and 3D per-vertex labels.

Conventions
-----------
* A confusion matrix is ``(n, n)`` int64 with rows = ground truth, columns = prediction.
* Ground-truth values listed in ``ignore`` (default ``(0,)``: "unlabelled") are skipped: those
  pixels / vertices are not evaluated at all. Ground-truth values outside ``[0, n)`` that are not
  ignored, and predictions outside ``[0, n)``, are errors.
* A prediction of an ignored id (e.g. 0 = "don't know") is evaluated and is simply wrong: it is
  a false negative for the ground-truth class. Ignored ids are never scored themselves.
* IoU of class c = tp / (tp + fp + fn). The **mean IoU averages over the classes present in the
  ground truth** (row sum > 0). A class that is only predicted (a false alarm) gets IoU 0 in
  ``per_class_iou`` but does not enter the mean: its false positives already lower the IoU of
  the classes it was confused with, and averaging over a class the scene does not contain would
  make the mean depend on which wrong classes a method happens to use. This is the ScanNet
  benchmark convention for a single scene (there, over the whole dataset, absent classes are
  likewise left out).
* Accuracy = correctly labelled / evaluated (non-ignored ground truth).

Plots use matplotlib's Agg canvas directly (no pyplot, no display, no global backend state).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .atomic_io import atomic_path, write_json_atomic


# ------------------------------------------------------------------------------------ confusion
def confusion_matrix(pred: np.ndarray, gt: np.ndarray, n_classes: int, ignore: Sequence[int] = (0,)) -> np.ndarray:
    """Confusion matrix ``(n_classes, n_classes)`` int64, rows = gt, cols = pred.

    `pred` and `gt` must have the same shape (any number of dimensions). Ground truth in
    `ignore` is skipped; the remaining ground truth and every prediction (also those at
    ignored pixels, so that a broken prediction never hides) must lie in ``[0, n_classes)``,
    else ValueError.
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}")
    n = int(n_classes)
    if n <= 0:
        raise ValueError(f"n_classes must be positive, got {n_classes}")
    for name, arr in (("prediction", pred), ("ground truth", gt)):
        if arr.dtype.kind not in "iub":
            raise ValueError(f"{name} labels must be integers, got dtype {arr.dtype}")
    gt = gt.reshape(-1).astype(np.int64, copy=False)
    pred = pred.reshape(-1).astype(np.int64, copy=False)
    _check_range("prediction", pred, n)
    ignore = np.asarray(list(ignore), dtype=np.int64)
    if ignore.size:
        keep = ~np.isin(gt, ignore)
        gt, pred = gt[keep], pred[keep]
    _check_range("ground truth (not ignored)", gt, n)
    if gt.size == 0:
        return np.zeros((n, n), np.int64)
    counts = np.bincount(gt * n + pred, minlength=n * n)
    return counts.reshape(n, n).astype(np.int64, copy=False)


def _check_range(name: str, arr: np.ndarray, n: int) -> None:
    if arr.size == 0:
        return
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= n:
        raise ValueError(f"{name} labels must lie in [0, {n}); found values in [{lo}, {hi}]")


# ------------------------------------------------------------------------------------ scores
@dataclass
class Scores:
    miou: float  # mean IoU over classes present in the ground truth; nan if none
    accuracy: float  # correct / evaluated; nan if nothing was evaluated
    per_class_iou: dict[int, float]  # classes present in gt or pred (not ignored)
    n_evaluated: int
    support: dict[int, int] = field(default_factory=dict)  # ground-truth count per class in per_class_iou

    def to_json(self, names: Sequence[str] | None = None) -> dict:
        """Plain JSON types; nan becomes None. Per-class entries are sorted by class id."""
        per_class = []
        for cid in sorted(self.per_class_iou):
            entry = {"id": int(cid), "iou": _finite_or_none(self.per_class_iou[cid]),
                     "support": int(self.support.get(cid, 0))}
            if names is not None:
                entry["name"] = str(names[cid]) if 0 <= cid < len(names) else f"class_{cid}"
            per_class.append(entry)
        return {
            "miou": _finite_or_none(self.miou),
            "accuracy": _finite_or_none(self.accuracy),
            "n_evaluated": int(self.n_evaluated),
            "n_classes_in_gt": int(sum(1 for c in self.per_class_iou if self.support.get(c, 0) > 0)),
            "per_class": per_class,
        }


def _finite_or_none(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def scores(conf: np.ndarray, classes: Sequence[int] | None = None, ignore: Sequence[int] = (0,)) -> Scores:
    """IoU per class, mean IoU and accuracy from a confusion matrix (rows gt, cols pred).

    classes: the class ids to score (default: all). Ids in `ignore` are never scored; their
    column still counts (a prediction of an ignored id is a false negative of the gt class).
    The mean IoU is over scored classes present in the ground truth (see the module docstring).
    """
    conf = np.asarray(conf)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {conf.shape}")
    n = conf.shape[0]
    conf = conf.astype(np.int64, copy=False)
    selected = np.zeros(n, bool)
    if classes is None:
        selected[:] = True
    else:
        ids = np.asarray(list(classes), dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= n):
            raise ValueError(f"classes must lie in [0, {n})")
        selected[ids] = True
    for c in ignore:
        if 0 <= c < n:
            selected[c] = False

    tp = np.diag(conf)
    gt_count = conf.sum(axis=1)
    pred_count = conf.sum(axis=0)
    fn = gt_count - tp
    fp = pred_count - tp
    union = tp + fp + fn
    present_gt = selected & (gt_count > 0)
    reported = selected & (union > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)

    per_class = {int(c): float(iou[c]) for c in np.flatnonzero(reported)}
    support = {int(c): int(gt_count[c]) for c in np.flatnonzero(reported)}
    miou = float(iou[present_gt].mean()) if present_gt.any() else float("nan")
    n_eval = int(gt_count[selected].sum())
    correct = int(tp[selected].sum())
    accuracy = correct / n_eval if n_eval else float("nan")
    return Scores(miou=miou, accuracy=accuracy, per_class_iou=per_class, n_evaluated=n_eval, support=support)


def write_scores_json(scores_by_method: dict[str, Scores], names: Sequence[str] | None, path: Path) -> None:
    """One JSON file: {"methods": {method: Scores.to_json(names)}}."""
    write_json_atomic(Path(path), {"methods": {m: s.to_json(names) for m, s in scores_by_method.items()}})


# ------------------------------------------------------------------------------------ instances
def instance_ap(pred_instance: np.ndarray, pred_class: np.ndarray, pred_score: np.ndarray, gt_instance: np.ndarray,
                gt_labels: np.ndarray, thresholds: Sequence[float] = (0.5, 0.25), ignore_classes: Sequence[int] = (0,),
                min_gt_vertices: int = 1) -> dict:
    """Instance segmentation average precision per IoU threshold (ScanNet-style, class-aware).

    pred_instance: (V,) predicted instance id per vertex (-1 = none), ids 0..I-1; pred_class,
    pred_score: (I,) each instance's class and confidence. gt_instance: (V,) ground-truth instance
    id (<= 0 = none); gt_labels: (V,) ground-truth class per vertex, an instance's class is its
    vertices' majority. GT instances of `ignore_classes` or under `min_gt_vertices` vertices, and
    predictions of ignored classes, are left out. Per class, predictions in descending score take
    the unmatched GT instance of that class with the highest IoU >= t (true positive) or are false
    positives; AP is the area under the precision envelope over recall (all points). The mean is
    over classes with GT instances (a class without predictions scores 0).
    Returns {"ap": {t: mean AP}, "per_class": {t: {class: AP}}, "n_gt": GT instances, "n_pred": scored predictions}.
    """
    pred_instance = np.asarray(pred_instance, dtype=np.int64)
    gt_instance = np.asarray(gt_instance, dtype=np.int64)
    gt_labels = np.asarray(gt_labels, dtype=np.int64)
    pred_class = np.asarray(pred_class, dtype=np.int64)
    pred_score = np.asarray(pred_score, dtype=np.float64)
    if not (pred_instance.shape == gt_instance.shape == gt_labels.shape):
        raise ValueError("pred_instance, gt_instance and gt_labels must be per vertex, of one shape")
    n_pred = len(pred_class)
    if pred_score.shape != (n_pred,):
        raise ValueError("pred_class and pred_score must have one entry per predicted instance")
    # ground-truth instances: compact ids, majority class, size
    has_gt = gt_instance > 0
    gt_ids, gt_inv = np.unique(gt_instance[has_gt], return_inverse=True)
    G = len(gt_ids)
    g_of = np.full(len(gt_instance), -1, np.int64)
    g_of[has_gt] = gt_inv.reshape(-1)
    gt_size = np.bincount(g_of[has_gt], minlength=G)
    gt_cls = np.zeros(G, np.int64)
    if G:
        L = int(gt_labels.max()) + 1
        pair, cnt = np.unique(g_of[has_gt] * L + gt_labels[has_gt], return_counts=True)
        order = np.lexsort((-cnt, pair // L))
        first = np.r_[True, (pair // L)[order][1:] != (pair // L)[order][:-1]]
        gt_cls[(pair // L)[order][first]] = (pair % L)[order][first]
    ignore = set(int(c) for c in ignore_classes)
    gt_ok = (gt_size >= max(1, min_gt_vertices)) & ~np.isin(gt_cls, list(ignore))
    pred_size = np.bincount(pred_instance[pred_instance >= 0], minlength=n_pred)
    both = (pred_instance >= 0) & has_gt
    key, inter = np.unique(pred_instance[both] * max(G, 1) + g_of[both], return_counts=True)
    pi, gi = key // max(G, 1), key % max(G, 1)
    iou = inter / (pred_size[pi] + gt_size[gi] - inter)
    classes = sorted(set(gt_cls[gt_ok].tolist()))
    pred_ok = ~np.isin(pred_class, list(ignore)) & (pred_size > 0)
    out = {"ap": {}, "per_class": {}, "n_gt": int(gt_ok.sum()), "n_pred": int(pred_ok.sum())}
    for t in thresholds:
        per_class = {}
        for c in classes:
            preds = np.flatnonzero(pred_ok & (pred_class == c))
            preds = preds[np.argsort(-pred_score[preds], kind="stable")]
            n_gt = int((gt_ok & (gt_cls == c)).sum())
            matched = np.zeros(G, bool)
            tp = np.zeros(len(preds), bool)
            for r, p in enumerate(preds):
                sel = (pi == p) & (iou >= t)
                cand = gi[sel]
                ok = gt_ok[cand] & (gt_cls[cand] == c) & ~matched[cand]
                if ok.any():
                    best = cand[ok][np.argmax(iou[sel][ok])]
                    matched[best] = True
                    tp[r] = True
            per_class[int(c)] = _average_precision(tp, n_gt)
        out["per_class"][float(t)] = per_class
        out["ap"][float(t)] = float(np.mean(list(per_class.values()))) if per_class else float("nan")
    return out


def _average_precision(tp: np.ndarray, n_gt: int) -> float:
    """Area under the precision envelope over recall for ranked detections (tp flags) of n_gt objects."""
    if n_gt == 0:
        return float("nan")
    if not len(tp):
        return 0.0
    ctp = np.cumsum(tp)
    precision = ctp / np.arange(1, len(tp) + 1)
    recall = ctp / n_gt
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.diff(np.r_[0.0, recall])
    return float(np.sum(steps * envelope))


# ------------------------------------------------------------------------------------ plots
def _name(names: Sequence[str], cid: int) -> str:
    return str(names[cid]) if 0 <= cid < len(names) else f"class_{cid}"


def _save_figure(fig, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=fig.dpi)


def plot_per_class_iou(scores_by_method: dict[str, Scores], names: Sequence[str], path: Path, title: str,
                       max_classes: int | None = 60) -> None:
    """Grouped bar chart of per-class IoU, one bar per method, classes sorted by ground-truth
    frequency (most frequent first; classes only predicted come last). PNG at `path`."""
    from matplotlib.figure import Figure

    support: dict[int, int] = {}
    for s in scores_by_method.values():
        for c in s.per_class_iou:
            support[c] = max(support.get(c, 0), s.support.get(c, 0))
    order = sorted(support, key=lambda c: (-support[c], c))
    if max_classes is not None:
        order = order[:max_classes]
    methods = list(scores_by_method)
    n_cls, n_m = len(order), max(len(methods), 1)

    fig = Figure(figsize=(max(6.0, 0.28 * n_cls * max(1.0, n_m / 2) + 1.5), 4.8), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / n_m
    x = np.arange(n_cls)
    for k, m in enumerate(methods):
        s = scores_by_method[m]
        vals = [s.per_class_iou.get(c, np.nan) for c in order]
        vals = [0.0 if v is None or not math.isfinite(v) else v for v in vals]
        miou = "n/a" if not math.isfinite(s.miou) else f"{s.miou:.3f}"
        ax.bar(x - 0.4 + width * (k + 0.5), vals, width=width, label=f"{m} (mIoU {miou})")
    ax.set_xticks(x)
    ax.set_xticklabels([_name(names, c) for c in order], rotation=90, fontsize=8)
    ax.set_xlim(-0.6, max(n_cls, 1) - 0.4)
    ax.set_ylim(0, 1.15)  # room for the legend above the bars
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("IoU")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    if methods:
        ax.legend(fontsize=8, loc="upper right", ncol=min(len(methods), 3))
    fig.tight_layout()
    _save_figure(fig, path)


def plot_confusion(conf: np.ndarray, names: Sequence[str], path: Path, title: str, max_classes: int = 30) -> None:
    """Row-normalised confusion heatmap (rows gt, cols pred) of the `max_classes` classes most
    frequent in the ground truth, most frequent first, plus a last column "(other)" for
    predictions of every class not shown (unknown / ignored ids included), so rows sum to 1.
    PNG at `path`."""
    from matplotlib.figure import Figure

    conf = np.asarray(conf, dtype=np.float64)
    gt_count = conf.sum(axis=1)
    order = [int(c) for c in np.argsort(-gt_count, kind="stable") if gt_count[c] > 0][:max_classes]
    if not order:  # nothing evaluated: still write a (blank) figure
        order = list(range(min(conf.shape[0], max_classes)))
    sub = conf[np.ix_(order, order)]
    rows = gt_count[order][:, None]
    other = rows - sub.sum(axis=1, keepdims=True)  # predictions of classes not in the plot
    sub = np.concatenate([sub, other], axis=1)
    norm = np.divide(sub, rows, out=np.zeros_like(sub), where=rows > 0)

    n = len(order)
    side = max(4.5, 0.3 * n + 2.5)
    fig = Figure(figsize=(side + 1.3, side), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(norm, vmin=0.0, vmax=1.0, cmap="viridis", interpolation="nearest")
    labels = [_name(names, c) for c in order]
    ax.set_xticks(np.arange(n + 1))
    ax.set_yticks(np.arange(n))
    ax.set_xticklabels(labels + ["(other)"], rotation=90, fontsize=7)
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of gt row")
    fig.tight_layout()
    _save_figure(fig, path)
