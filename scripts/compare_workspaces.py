"""Compare two scene workspaces (or two demo output folders): every stage record's output hash and
the sha256 of every output file. Exit 1 when a required output differs.

    python scripts/compare_workspaces.py demo_before/ demo_after/   # demo folders: workspace/<scene>
    python scripts/compare_workspaces.py ws_a ws_b --all-files      # list every file that differs

Required byte-identical: labels/*.npy, labels/soft.h5, labels/labels.ply, labels/classes.json,
mesh.ply, eval/scores.json, and every done-record's output hash. Records' timings, hosts and
versions, logs and the state index are not compared.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

REQUIRED = ("mesh.ply", "labels/", "eval/scores.json")
IGNORED = ("state/", "logs/", "state_index.json", ".state.lock")


def scene_dir(path: Path) -> Path:
    """A workspace itself, or the one scene workspace of a demo output folder."""
    if (path / "scene.json").exists():
        return path
    found = sorted(p.parent for p in path.glob("workspace/*/scene.json"))
    if len(found) != 1:
        sys.exit(f"{path}: not a workspace, nor a demo folder with one workspace/<scene>")
    return found[0]


def record_hashes(ws: Path) -> dict[str, dict]:
    out = {}
    for path in sorted((ws / "state").glob("*.json")):
        rec = json.loads(path.read_text())
        out[path.stem] = {k: rec.get(k) for k in ("status", "config_hash", "input_hash", "output_hash")}
    return out


def file_hashes(ws: Path) -> dict[str, str]:
    out = {}
    for path in sorted(p for p in ws.rglob("*") if p.is_file()):
        rel = path.relative_to(ws).as_posix()
        if not rel.startswith(IGNORED) and rel not in IGNORED:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--all-files", action="store_true", help="list every differing file, not only required ones")
    args = ap.parse_args(argv)
    a, b = scene_dir(args.a), scene_dir(args.b)
    bad = 0
    ra, rb = record_hashes(a), record_hashes(b)
    print(f"{'stage':28s} {'output hash A':18s} {'output hash B':18s}")
    for stage in sorted(set(ra) | set(rb)):
        ha, hb = (ra.get(stage) or {}).get("output_hash"), (rb.get(stage) or {}).get("output_hash")
        same = ha == hb and (ra.get(stage) or {}).get("config_hash") == (rb.get(stage) or {}).get("config_hash")
        bad += not same
        print(f"{stage:28s} {str(ha):18s} {str(hb):18s} {'same' if same else 'DIFFERENT (output or config hash)'}")
    fa, fb = file_hashes(a), file_hashes(b)
    differing = sorted(rel for rel in set(fa) | set(fb) if fa.get(rel) != fb.get(rel))
    required_diff = [rel for rel in differing if rel.startswith(REQUIRED)]
    bad += len(required_diff)
    print(f"files: {len(fa)} in A, {len(fb)} in B, {len(differing)} differ ({len(required_diff)} required ones)")
    for rel in ("labels/labels.npy", "mesh.ply", "eval/scores.json", "labels/soft.h5"):
        verdict = "same" if fa.get(rel) == fb.get(rel) else "DIFFERENT"
        print(f"  {rel:28s} {fa.get(rel, '-')[:16]} {fb.get(rel, '-')[:16]} {verdict}")
    for rel in (differing if args.all_files else required_diff):
        print(f"  differs: {rel}")
    print("IDENTICAL" if not bad else f"{bad} DIFFERENCES")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
