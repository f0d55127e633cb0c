"""`labelmaker report <out root>`: a static HTML report of a whole batch, for deciding which scenes
came out well and which to look at or drop.

Built from small per-scene files only (never meshes): the stage records' status fields (the state
index `status` reads), the summary export writes (`label_summary`: frames, vertices, counts per
class, the models' agreement, upright turns), evaluate's summary (`eval_summary`) and the
preview points export keeps for the 3D view. Output, under `<out root>/_batch/report/` (or
`batch_report.out_dir`), opens from disk (file://), no server, nothing fetched:

    index.html              sortable, filterable table of scenes, flags, dataset plots (inline SVG)
    assets/                 report.css, report.js (the table), viewer.js (the 3D point viewer), data.js
    scenes/<scene>.html     preview picture, per-class counts, scores, stages, interactive 3D view
    scenes/<scene>.js       the scene's subsampled labelled points (base64), loaded by a script tag
    scenes/<scene>.png      the preview picture (hard link to the workspace's, copied across devices)

Functional core (rows, flags, plots, pages as strings) plus one writer, which updates the report
in place: a scene's files are rewritten only when what they are made from changed.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
import shutil
import time
import uuid
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm import tqdm

from ..io.arkitscenes import SKY_TO_UPRIGHT
from ..workspace import Workspace
from .batch_folder import BatchFolder

ASSETS_DIR = Path(__file__).resolve().parent / "report_assets"
ASSET_FILES = ("report.css", "report.js", "viewer.js")
FLAGS = ("failed", "stale", "low_agreement", "low_coverage", "few_frames", "upright_vs_sky")


@dataclass
class BatchReportConfig:
    out_dir: Optional[str] = None  # null: <out root>/_batch/report
    min_mean_confidence: float = 0.6  # low agreement: the consensus winner's mean vote share is below this
    max_disagree_share: float = 0.25  # low agreement: two models name unrelated classes on more pixels than this
    min_labelled_share: float = 0.6  # low coverage: fewer of the mesh's vertices than this got a label
    min_frames: int = 30  # few frames: fewer imported frames than this
    max_points: int = 6000  # points per scene in the 3D view (at most what export kept, export.preview_points)
    top_classes: int = 40  # classes drawn in the dataset histogram (the full table is below it)
    workers: int = 0  # processes writing scene pages (0: one per CPU, at most 8)


# ----------------------------------------------------------------------------------- core: rows and flags
def upright_disagreement(upright_counts: dict, sky_direction: Optional[str]) -> Optional[str]:
    """A message when the upright turn most frames got from their poses differs from the one the
    metadata's sky_direction implies; None when they agree or either is unknown."""
    if not upright_counts or sky_direction not in SKY_TO_UPRIGHT:
        return None
    counts = {int(k): int(v) for k, v in upright_counts.items()}
    turn = max(sorted(counts), key=lambda k: counts[k])
    expected = SKY_TO_UPRIGHT[sky_direction]
    if turn == expected:
        return None
    share = counts[turn] / max(1, sum(counts.values()))
    return (
        f"poses turn {share:.0%} of frames by {turn * 90} deg, metadata sky_direction {sky_direction} "
        f"implies {expected * 90} deg"
    )


def scene_flags(row: dict, cfg: BatchReportConfig) -> dict[str, str]:
    """Flag name -> why, for one scene row (see `scene_row`)."""
    flags = {}
    failures = row["failures"]
    if failures:
        flags["failed"] = "; ".join(f"{f['stage']} [{f['error_class']}]: {f['error']}" for f in failures)
    if row["stale"]:
        flags["stale"] = "stale: " + ", ".join(row["stale"]) + " (config, code or inputs changed; rerun the batch)"
    conf, disagree = row.get("mean_confidence"), row.get("disagree_share")
    low = []
    if conf is not None and conf < cfg.min_mean_confidence:
        low.append(f"mean consensus confidence {conf:.2f} < {cfg.min_mean_confidence:.2f}")
    if disagree is not None and disagree > cfg.max_disagree_share:
        low.append(f"models disagree on {disagree:.0%} of pixels > {cfg.max_disagree_share:.0%}")
    if low:
        flags["low_agreement"] = "; ".join(low)
    share = row.get("labelled_share")
    if share is not None and share < cfg.min_labelled_share:
        flags["low_coverage"] = f"{share:.0%} of vertices labelled < {cfg.min_labelled_share:.0%}"
    frames = row.get("frames")
    if frames is not None and frames < cfg.min_frames:
        flags["few_frames"] = f"{frames} frames < {cfg.min_frames}"
    if row.get("upright_message"):
        flags["upright_vs_sky"] = row["upright_message"]
    return flags


def scene_row(state, summary: Optional[dict], scores: Optional[dict], imported: Optional[dict]) -> dict:
    """One scene's table row from its state (pipeline.state.SceneState), export's summary, evaluate's
    summary and (for scenes without an export) the import record's summary."""
    summary = summary or {}
    frames = summary.get("n_frames", (imported or {}).get("n_frames"))
    upright = summary.get("upright_counts", (imported or {}).get("upright_counts"))
    sky = summary.get("sky_direction", (imported or {}).get("sky_direction_metadata"))
    stages = {name: s.status for name, s in state.stages.items()}
    seconds = {name: s.seconds for name, s in state.stages.items() if s.seconds is not None and s.status != "failed"}
    miou = (scores or {}).get("miou_3d", {}).get("lifted consensus")
    return {
        "scene": state.scene,
        "status": state.status,
        "frames": frames,
        "vertices": summary.get("vertices"),
        "labelled_share": summary.get("labelled_share"),
        "mean_confidence": summary.get("mean_confidence"),
        "disagree_share": summary.get("disagree_share"),
        "entropy_bits": summary.get("entropy_bits"),
        "classes": sum(1 for k in summary.get("class_counts", {}) if k != "0") if summary else None,
        "miou_3d": miou,
        "seconds": round(sum(seconds.values()), 1) if seconds else None,
        "stage_seconds": seconds,
        "stages": stages,
        "stale": [name for name, st in stages.items() if st == "stale"],
        "failures": [
            {"stage": f.stage, "error_class": f.error_class, "error": f.error, "attempt": f.attempt}
            for f in state.failures()
        ],
        "upright_counts": upright or {},
        "sky_direction": sky,
        "upright_message": upright_disagreement(upright or {}, sky),
        "has_summary": bool(summary),
    }


def dataset_aggregates(rows: list[dict], summaries: dict[str, dict], stage_kinds: dict[str, str]) -> dict:
    """Class histogram in ScanNet200 ids over all scenes, agreement values per scene, seconds per stage kind."""
    from ..labels import label_space, unified_space, unified_to

    to200 = unified_to("scannet200")
    n_unified = len(unified_space().ids)
    unified_counts = np.zeros(n_unified, dtype=np.int64)
    for summary in summaries.values():
        for key, count in summary.get("class_counts", {}).items():
            k = int(key)
            if 0 <= k < n_unified:
                unified_counts[k] += int(count)
    per200 = Counter()
    for k in np.flatnonzero(unified_counts):
        per200[int(to200[k])] += int(unified_counts[k])
    names200 = dict(zip(label_space("scannet200").ids.tolist(), label_space("scannet200").names))
    time_per_kind = Counter()
    for row in rows:
        for name, secs in row["stage_seconds"].items():
            time_per_kind[stage_kinds.get(name, name)] += float(secs)
    return {
        "classes200": [
            (cid, names200.get(cid, "unlabelled" if cid == 0 else f"id {cid}"), n)
            for cid, n in sorted(per200.items(), key=lambda kv: (-kv[1], kv[0]))
        ],
        "mean_confidence": [r["mean_confidence"] for r in rows if r["mean_confidence"] is not None],
        "disagree_share": [r["disagree_share"] for r in rows if r["disagree_share"] is not None],
        "time_per_kind": dict(sorted(time_per_kind.items(), key=lambda kv: -kv[1])),
    }


# ----------------------------------------------------------------------------------- core: SVG plots
def _e(text) -> str:
    return html.escape(str(text), quote=True)


def svg_hbars(
    items: list[tuple[str, float, str]], title: str, unit: str = "", width: int = 680, bar_h: int = 14
) -> str:
    """Horizontal bar chart: (label, value, value text) per bar, longest first as given."""
    label_w, pad = 230, 4
    height = 28 + len(items) * (bar_h + pad) + 6
    vmax = max([v for _, v, _ in items] + [1e-12])
    out = [
        f'<svg class="plot" role="img" aria-label="{_e(title)}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}"><text x="0" y="16" class="ptitle">{_e(title)}</text>'
    ]
    for i, (label, value, text) in enumerate(items):
        y = 28 + i * (bar_h + pad)
        w = max(1.0, (width - label_w - 150) * value / vmax)
        out.append(
            f'<text x="{label_w - 6}" y="{y + bar_h - 3}" text-anchor="end" class="plabel">{_e(label)}</text>'
            f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" class="bar">'
            f"<title>{_e(label)}: {_e(text)}{_e(unit)}</title></rect>"
            f'<text x="{label_w + w + 4:.1f}" y="{y + bar_h - 3}" class="pval">{_e(text)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def svg_histogram(
    values: list[float],
    title: str,
    lo: float = 0.0,
    hi: float = 1.0,
    bins: int = 20,
    threshold: Optional[float] = None,
    width: int = 440,
    height: int = 180,
) -> str:
    """Histogram of values in [lo, hi] with an optional threshold line (a flag's limit)."""
    counts, edges = np.histogram(np.clip(np.asarray(values, dtype=np.float64), lo, hi), bins=bins, range=(lo, hi))
    left, bottom, top = 36, height - 24, 26
    plot_w = width - left - 8
    cmax = max(int(counts.max()) if len(counts) else 0, 1)
    out = [
        f'<svg class="plot" role="img" aria-label="{_e(title)}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}"><text x="0" y="16" class="ptitle">{_e(title)} ({len(values)} scenes)</text>',
        f'<line x1="{left}" y1="{bottom}" x2="{left + plot_w}" y2="{bottom}" class="axis"/>',
        f'<text x="{left - 4}" y="{top + 8}" text-anchor="end" class="pval">{cmax}</text>',
    ]
    bw = plot_w / bins
    for i, c in enumerate(counts.tolist()):
        h = (bottom - top) * c / cmax
        out.append(
            f'<rect x="{left + i * bw + 1:.1f}" y="{bottom - h:.1f}" width="{bw - 2:.1f}" height="{h:.1f}" class="bar">'
            f"<title>{edges[i]:.2f}-{edges[i + 1]:.2f}: {c} scenes</title></rect>"
        )
    for x in (lo, (lo + hi) / 2, hi):
        px = left + plot_w * (x - lo) / (hi - lo)
        out.append(f'<text x="{px:.1f}" y="{bottom + 14}" text-anchor="middle" class="pval">{x:g}</text>')
    if threshold is not None:
        px = left + plot_w * (threshold - lo) / (hi - lo)
        out.append(
            f'<line x1="{px:.1f}" y1="{top - 4}" x2="{px:.1f}" y2="{bottom}" class="limit">'
            f"<title>flag threshold {threshold:g}</title></line>"
        )
    out.append("</svg>")
    return "".join(out)


# ----------------------------------------------------------------------------------- core: pages
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def page_stem(scene: str) -> str:
    """A file name for a scene's page: its name when safe, else a cleaned name plus a short hash."""
    if not _SAFE.search(scene) and not scene.startswith("."):
        return scene
    return _SAFE.sub("_", scene).lstrip(".") + "-" + hashlib.sha1(scene.encode()).hexdigest()[:8]


def js_data(name: str, data) -> str:
    """`window.<name> = <JSON>;` safe inside a script file or tag."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    return f"window.{name} = {text};\n"


def encode_points(points: np.ndarray, max_points: int) -> dict:
    """The viewer's point data: positions quantised to uint16 in the bounding box, RGB uint8 and
    unified class id uint8, little-endian, base64 (10 bytes a point); an even subsample of at most
    `max_points` points."""
    points = np.asarray(points)
    if len(points) > max_points:
        points = points[np.linspace(0, len(points) - 1, max_points).astype(np.int64)]
    xyz = points[:, :3].astype(np.float32)
    lo = xyz.min(axis=0) if len(xyz) else np.zeros(3, np.float32)
    span = np.maximum((xyz.max(axis=0) - lo) if len(xyz) else np.ones(3, np.float32), 1e-6)
    q = np.rint((xyz - lo) * (65535 / span)).astype("<u2")
    rgb = points[:, 3:6].astype(np.uint8)  # 0..255 and 0..204 as export stores them
    ids = points[:, 6].astype(np.uint8)
    blob = q.tobytes() + rgb.tobytes() + ids.tobytes()
    return {
        "n": int(len(points)),
        "min": [round(float(v), 5) for v in lo],
        "span": [round(float(v), 5) for v in span],
        "data": base64.b64encode(blob).decode("ascii"),
    }


def points_js(points: np.ndarray, max_points: int) -> str:
    """A scene's points file: `window.SCENE_POINTS = {...};` (base64 needs no JSON escaping)."""
    enc = encode_points(points, max_points)
    data = enc.pop("data")
    return js_data("SCENE_POINTS", enc)[:-3] + f',"data":"{data}"}};\n'


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _fmt(value, kind: str = "") -> str:
    if value is None:
        return "–"
    if kind == "pct":
        return f"{value:.1%}"
    if kind == "f":
        return f"{value:.3f}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _head(title: str, prefix: str) -> str:
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f'<link rel="stylesheet" href="{prefix}assets/report.css"></head>'
    )


def index_html(title: str, totals: dict, plots: list[str], generated: str, cfg: BatchReportConfig) -> str:
    flag_options = "".join(f'<option value="{f}">{f.replace("_", " ")}</option>' for f in FLAGS)
    cards = "".join(
        f'<div class="card"><div class="v">{_e(v)}</div><div class="k">{_e(k)}</div></div>' for k, v in totals.items()
    )
    thresholds = (
        f"low agreement: mean consensus confidence &lt; {cfg.min_mean_confidence:g} or models disagree on &gt; "
        f"{cfg.max_disagree_share:.0%} of pixels; low coverage: &lt; {cfg.min_labelled_share:.0%} of vertices "
        "labelled; "
        f"few frames: &lt; {cfg.min_frames}; upright vs sky: the poses' upright turn differs from metadata's "
        "sky_direction (config section <code>batch_report</code>)"
    )
    return f"""{_head(title, "")}<body>
<h1>{_e(title)}</h1><p class="meta">generated {_e(generated)} by <code>labelmaker report</code></p>
<div class="cards">{cards}</div>
<h2>Scenes</h2>
<div class="controls"><input id="filter" type="search" placeholder="filter: scene, flag, status, error text" size="40">
<select id="flag"><option value="">all scenes</option><option value="any">flagged</option>
<option value="none">not flagged</option>{flag_options}</select>
<select id="status"><option value="">any status</option><option>done</option><option>failed</option>
<option>pending</option><option>running</option></select>
<span id="shown"></span></div>
<p class="meta">Flags: {thresholds}. Click a column to sort; the view is kept in the address
(#sort=..&amp;flag=..&amp;q=..).</p>
<table id="scenes" class="scenes"><thead><tr></tr></thead><tbody></tbody></table>
<h2>Dataset</h2><div class="plots">{"".join(plots)}</div>
<script src="assets/data.js"></script><script src="assets/report.js"></script>
</body></html>"""


@dataclass(frozen=True)
class ClassCells:
    """Per unified class, its escaped name, its swatch and its ScanNet200 id as page text (made once)."""

    names: tuple[str, ...]
    swatches: tuple[str, ...]
    ids200: tuple[str, ...]

    @classmethod
    def build(cls) -> "ClassCells":
        from ..labels import unified_space, unified_to

        unified = unified_space()
        to200 = unified_to("scannet200")
        return cls(
            tuple(_e(n) for n in unified.names),
            tuple(
                f'<span class="sw" style="background:rgb({int(c[0])},{int(c[1])},{int(c[2])})"></span>'
                for c in unified.colors
            ),
            tuple(str(int(i)) if i else "–" for i in to200),
        )

    def name(self, cid) -> str:
        k = int(cid)
        return self.names[k] if 0 <= k < len(self.names) else _e(cid)


def scene_html(
    row: dict,
    flags: dict[str, str],
    summary: Optional[dict],
    scores: Optional[dict],
    has_preview: bool,
    has_points: bool,
    stem: str,
    cells: ClassCells,
) -> str:
    """One scene's page (static, but for the 3D view which viewer.js draws from <stem>.js)."""
    summary = summary or {}
    esc_scene = _e(row["scene"])
    flag_items = "".join(
        f'<li><span class="flag flag-{f}">{f.replace("_", " ")}</span> {_e(msg)}</li>' for f, msg in flags.items()
    )
    facts = [
        ("status", row["status"]),
        ("frames", _fmt(row["frames"])),
        ("vertices", _fmt(row["vertices"])),
        ("labelled", _fmt(row["labelled_share"], "pct")),
        ("mean consensus confidence", _fmt(row["mean_confidence"], "f")),
        ("pixels where models disagree", _fmt(row["disagree_share"], "pct")),
        ("label entropy (bits)", _fmt(row["entropy_bits"], "f")),
        ("classes", _fmt(row["classes"])),
        ("mean vertex confidence", _fmt(summary.get("mean_vertex_confidence"), "f")),
        ("models", ", ".join(summary.get("models", [])) or "–"),
        (
            "upright turns (frames)",
            ", ".join(f"{int(k) * 90} deg: {v}" for k, v in sorted(row["upright_counts"].items())) or "–",
        ),
        ("sky_direction (metadata)", row["sky_direction"] or "–"),
        ("3D mIoU", _fmt(row["miou_3d"], "f")),
    ]
    fact_rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts)
    counts = {int(k): int(v) for k, v in summary.get("class_counts", {}).items()}
    total = max(1, sum(counts.values()))
    count_rows = "".join(
        f"<tr><td>{cells.swatches[k]}{cells.names[k]}</td>"
        f"<td>{k}</td><td>{cells.ids200[k]}</td><td class=num>{n}</td><td class=num>{n / total:.1%}</td></tr>"
        for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    )
    score_block = "<p>No ground truth for this scene.</p>"
    if scores:
        methods = "".join(
            f"<tr><td>{_e(m)}</td><td class=num>{_fmt(v, 'f')}</td><td class=num>"
            f"{_fmt(scores.get('accuracy_3d', {}).get(m), 'f')}</td></tr>"
            for m, v in scores.get("miou_3d", {}).items()
        )
        two_d = "".join(
            f"<tr><td>{_e(m)}</td><td class=num>{_fmt(v, 'f')}</td></tr>" for m, v in scores.get("miou_2d", {}).items()
        )
        support = scores.get("support_3d", {})
        per_class = "".join(
            f"<tr><td>{cells.name(c)}</td><td class=num>{_fmt(iou, 'f')}</td>"
            f"<td class=num>{support.get(c, 0)}</td></tr>"
            for c, iou in sorted(scores.get("per_class_iou_3d", {}).items(), key=lambda kv: -support.get(kv[0], 0))
        )
        score_block = (
            f'<table class="small"><tr><th>3D method</th><th>mIoU</th><th>accuracy</th></tr>{methods}</table>'
            f'<table class="small"><tr><th>2D</th><th>mIoU</th></tr>{two_d}</table>'
            f'<details><summary>3D IoU per class (lifted consensus)</summary><table class="small">'
            f"<tr><th>class</th><th>IoU</th><th>GT vertices</th></tr>{per_class}</table></details>"
        )
    stage_rows = "".join(
        f'<tr><td>{_e(name)}</td><td><span class="st st-{_e(status)}">{_e(status)}</span></td>'
        f"<td class=num>{_fmt(row['stage_seconds'].get(name))}</td></tr>"
        for name, status in row["stages"].items()
    )
    failures = "".join(
        f"<li><b>{_e(f['stage'])}</b> [{_e(f['error_class'])}, attempt {f['attempt']}]: {_e(f['error'])}</li>"
        for f in row["failures"]
    )
    preview = (
        f'<img class="preview" src="{_e(stem)}.png" alt="preview of {esc_scene}">'
        if has_preview
        else "<p>No preview picture (the report stage has not run).</p>"
    )
    viewer = (
        f'<div class="viewer"><canvas id="view3d" width="720" height="480" data-points-src="{_e(stem)}.js"></canvas>'
        '<div class="vctl"><button data-mode="labels">labels</button><button data-mode="rgb">colour</button>'
        '<button data-mode="reset">reset view</button> <span id="view3d-info"></span></div>'
        '<p class="meta">drag: turn, shift-drag: move, wheel: zoom</p></div>'
        f'<script src="{_e(stem)}.js"></script>'
        if has_points
        else "<p>No labelled points (export has not run for this scene).</p>"
    )
    return f"""{_head(f"{row['scene']} - labelmaker report", "../")}<body class="scene">
<p><a href="../index.html">&larr; all scenes</a></p>
<h1>{esc_scene} <span class="st st-{_e(row["status"])}">{_e(row["status"])}</span></h1>
{f'<ul class="flags">{flag_items}</ul>' if flag_items else '<p class="ok">no flags</p>'}
{f'<h2>Failures</h2><ul class="failures">{failures}</ul>' if failures else ""}
<div class="cols"><div><h2>Scene</h2><table class="facts">{fact_rows}</table>
<h2>Stages</h2><table class="small"><tr><th>stage</th><th>status</th><th>seconds</th></tr>
{stage_rows}</table></div>
<div><h2>3D view</h2>{viewer}</div></div>
<h2>Preview</h2>{preview}
<div class="cols"><div><h2>Classes</h2><table class="small counts">
<tr><th>class</th><th>unified id</th><th>ScanNet200 id</th><th>vertices</th><th>share</th></tr>
{count_rows}</table></div>
<div><h2>Scores</h2>{score_block}</div></div>
<script src="../assets/data.js"></script><script src="../assets/viewer.js"></script>
</body></html>"""


# ----------------------------------------------------------------------------------- shell
STATE_FILE = ".report-state.json"  # in the report folder: what each scene's files were made from


@dataclass
class ReportResult:
    index: Path
    scenes: int
    flagged: dict[str, int]
    seconds: float
    written: int  # scene pages (re)written this run; the others were up to date


def _put(path: Path, text: str) -> None:
    """Write a report file under a temporary name and rename it (no fsync: the report is derived
    from the workspaces and rebuilt by the next run)."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _file_key(path: Path) -> Optional[list]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _copy_preview(src: Optional[Path], dst: Path) -> None:
    if src is None:
        dst.unlink(missing_ok=True)
    else:
        _link_or_copy(src, dst)


def _write_points(ws: Workspace, dst: Path, max_points: int) -> None:
    points = ws.read_preview_points()
    _put(dst, points_js(points, max_points) if points is not None else "window.SCENE_POINTS = null;\n")


@dataclass
class _PageContext:
    pages: Path
    cfg: BatchReportConfig
    old_state: dict
    cells: ClassCells


def _scene_pages(chunk: list, ctx: _PageContext) -> list[tuple]:
    """Rows and pages of a chunk of scenes ((state, workspace) pairs): per scene (row, label
    summary, page stem, state entry, whether the page was written). Runs in worker processes."""
    out = []
    pages, cfg = ctx.pages, ctx.cfg
    for state, workspace in chunk:
        ws = Workspace(workspace)
        stages = state.stages
        # (what a stage has never run for cannot exist: no file system round trip for it)
        summary = ws.read_summary("label_summary") if _has_run(stages, "export") else None
        scores = ws.read_summary("eval_summary") if _has_run(stages, "evaluate") else None
        imported = None
        if summary is None and "import" in stages and stages["import"].status == "done":
            imported = (ws.read_state("import") or {}).get("summary")
        row = scene_row(state, summary, scores, imported)
        flags = scene_flags(row, cfg)
        row["flags"] = flags
        stem = page_stem(state.scene)
        row["page"] = f"scenes/{stem}.html"
        old = ctx.old_state.get(stem, {})
        entry = {
            "preview": _file_key(ws.output_path("preview")),
            "points": _file_key(ws.output_path("preview_points")) if summary is not None else None,
        }
        if entry["points"] is not None:
            entry["points"] = [*entry["points"], cfg.max_points]
        if entry["preview"] != old.get("preview") or not (pages / f"{stem}.png").exists():
            _copy_preview(ws.output_path("preview") if entry["preview"] else None, pages / f"{stem}.png")
        if entry["points"] and (entry["points"] != old.get("points") or not (pages / f"{stem}.js").exists()):
            _write_points(ws, pages / f"{stem}.js", cfg.max_points)
        elif not entry["points"] and old.get("points"):
            (pages / f"{stem}.js").unlink(missing_ok=True)
        page = scene_html(
            row, flags, summary, scores, entry["preview"] is not None, entry["points"] is not None, stem, ctx.cells
        )
        entry["page"] = hashlib.sha1(page.encode()).hexdigest()
        wrote = entry["page"] != old.get("page") or not (pages / f"{stem}.html").exists()
        if wrote:
            _put(pages / f"{stem}.html", page)
        out.append((row, summary, stem, entry, wrote))
    return out


def _collect(results: list[tuple], rows: list, summaries: dict, flagged: Counter, new_state: dict) -> None:
    for row, summary, stem, entry, _ in results:
        rows.append(row)
        flagged.update(list(row["flags"]))
        new_state[stem] = entry
        if summary is not None:
            summaries[row["scene"]] = summary


def _has_run(stages: dict, name: str) -> bool:
    return name in stages and stages[name].status not in ("pending", "dependency_failed")


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another file system
        shutil.copyfile(src, dst)


def write_report(
    cfg, scenes, folder: BatchFolder, report_cfg: BatchReportConfig, progress: bool = True
) -> ReportResult:
    """Read the batch's per-scene summaries and write the report (see the module docstring).

    In place and incremental: a scene's page, points and picture are rewritten only when what
    they are made from changed (kept in `.report-state.json`); files of scenes no longer in the
    batch are removed; the index and its data are rewritten every time. Each file is renamed into
    place, so a browser never reads half a file."""
    from ..labels import unified_space
    from .state import read_status
    from .graph import scene_graph

    t0 = time.perf_counter()
    states = read_status(cfg, scenes, folder)
    kinds = {spec.name: spec.kind for spec in scene_graph(cfg)}
    target = Path(report_cfg.out_dir) if report_cfg.out_dir else folder.report_dir
    pages = target / "scenes"
    (target / "assets").mkdir(parents=True, exist_ok=True)
    pages.mkdir(exist_ok=True)
    try:
        old_state = json.loads((target / STATE_FILE).read_text())
    except (FileNotFoundError, ValueError):
        old_state = {}
    for name in ASSET_FILES:
        _put(target / "assets" / name, (ASSETS_DIR / name).read_text())

    unified = unified_space()
    names, colors = list(unified.names), np.asarray(unified.colors)
    workspaces = {s.scene: s.workspace for s in scenes}
    work = [(st, workspaces.get(st.scene, st.workspace)) for st in states]
    ctx = _PageContext(pages, report_cfg, old_state, ClassCells.build())
    n_workers = report_cfg.workers or min(8, os.cpu_count() or 1)
    size = max(50, -(-len(work) // (4 * n_workers)))
    chunks = [work[i : i + size] for i in range(0, len(work), size)]
    rows, summaries, flagged, new_state, written = [], {}, Counter(), {}, 0
    with tqdm(total=len(work), desc="report", unit="scene", disable=not progress) as bar:
        if n_workers > 1 and len(chunks) > 1:
            import multiprocessing

            with ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context("fork")) as pool:
                for results in pool.map(_scene_pages, chunks, [ctx] * len(chunks)):
                    bar.update(len(results))
                    _collect(results, rows, summaries, flagged, new_state)
                    written += sum(r[4] for r in results)
        else:
            for chunk in chunks:
                results = _scene_pages(chunk, ctx)
                bar.update(len(results))
                _collect(results, rows, summaries, flagged, new_state)
                written += sum(r[4] for r in results)
    for stem in set(old_state) - set(new_state):  # scenes no longer in the batch
        for suffix in (".html", ".js", ".png"):
            (pages / f"{stem}{suffix}").unlink(missing_ok=True)

    agg = dataset_aggregates(rows, summaries, kinds)
    top = agg["classes200"][: report_cfg.top_classes]
    total_vertices = sum(n for _, _, n in agg["classes200"]) or 1
    plots = [
        svg_hbars(
            [(f"{cid} {name}", n, f"{n / total_vertices:.1%}") for cid, name, n in top],
            f"Vertices per class over all scenes (ScanNet200 ids, top {len(top)} of {len(agg['classes200'])})",
        ),
        svg_histogram(
            agg["mean_confidence"], "Mean consensus confidence per scene", threshold=report_cfg.min_mean_confidence
        ),
        svg_histogram(
            agg["disagree_share"], "Share of pixels the models disagree on", threshold=report_cfg.max_disagree_share
        ),
        svg_hbars(
            [
                (kind, secs, f"{_duration(secs)} ({_duration(secs / max(1, len(rows)))}/scene)")
                for kind, secs in agg["time_per_kind"].items()
            ],
            "Where the time went: stage time summed over scenes",
        ),
        '<details><summary>All classes (ScanNet200 ids)</summary><table class="small"><tr><th>id</th><th>class</th>'
        "<th>vertices</th><th>share</th></tr>"
        + "".join(
            f"<tr><td>{cid}</td><td>{_e(name)}</td><td class=num>{n}</td>"
            f"<td class=num>{n / total_vertices:.2%}</td></tr>"
            for cid, name, n in agg["classes200"]
        )
        + "</table></details>",
    ]
    status_counts = Counter(r["status"] for r in rows)
    totals = {
        "scenes": len(rows),
        **{k: status_counts[k] for k in ("done", "failed", "pending", "running") if status_counts[k]},
        "flagged": sum(1 for r in rows if r["flags"]),
        "frames": sum(r["frames"] or 0 for r in rows),
        "labelled vertices": sum(round((r["vertices"] or 0) * (r["labelled_share"] or 0)) for r in rows),
    }
    generated = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    title = f"labelmaker batch report: {folder.out_root.resolve().name}"
    columns = [
        ["scene", "scene"],
        ["status", "status"],
        ["frames", "frames"],
        ["vertices", "vertices"],
        ["labelled_share", "labelled"],
        ["mean_confidence", "agreement (mean conf.)"],
        ["disagree_share", "models disagree"],
        ["entropy_bits", "label entropy"],
        ["classes", "classes"],
        ["miou_3d", "3D mIoU"],
        ["seconds", "stage s"],
        ["flags", "flags"],
    ]
    table_rows = [
        {
            k: r[k]
            for k in (
                "scene",
                "status",
                "frames",
                "vertices",
                "labelled_share",
                "mean_confidence",
                "disagree_share",
                "entropy_bits",
                "classes",
                "miou_3d",
                "seconds",
                "page",
                "flags",
            )
        }
        for r in rows
    ]
    palette = [[int(c) for c in rgb] for rgb in colors]
    _put(
        target / "assets" / "data.js",
        js_data("REPORT", {"columns": columns, "rows": table_rows, "flags": list(FLAGS)})
        + js_data("CLASSES", {"names": names, "colors": palette}),
    )
    _put(target / "index.html", index_html(title, totals, plots, generated, report_cfg))
    _put(target / STATE_FILE, json.dumps(new_state))
    return ReportResult(target / "index.html", len(rows), dict(flagged), time.perf_counter() - t0, written)
