"""Frame decoding: OpenCV (what import uses, labelmaker/io/images.py) vs PIL (what it used before).

1. Whole process, as a user runs it: `labelmaker import posed_rgbd` of the real 7-Scenes kitchen
   (150 frames of 640x480 JPEG colour + 16-bit PNG depth, ../shared/data) into a fresh workspace,
   once with OpenCV decoding and once with the previous PIL decoder patched in; frames/s of the
   whole command (start-up included) and of the import stage alone (its record's seconds).
2. Decoding alone, in this process: ms per JPEG colour and per PNG depth frame, both ways.
3. Resizing a colour frame (PIL bilinear vs OpenCV area/linear), ms per frame.
Each figure is the best of --repeats runs (the machine may be shared and busy).

    python bench/bench_image_decoding.py [--repeats 3] [--capture ../shared/data/7scenes_redkitchen_150]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

KITCHEN = Path(__file__).resolve().parents[2] / "shared" / "data" / "7scenes_redkitchen_150"


def pil_read_frame(path: Path, scene: str, what: str) -> np.ndarray:
    """The PIL decoder import used before OpenCV (same errors, same arrays)."""
    from PIL import Image, UnidentifiedImageError

    from labelmaker.io import images

    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L"):
                return np.array(img, dtype=np.uint16)
            if what == "color" and img.mode != "RGB":
                img = img.convert("RGB")
            return np.array(img)
    except FileNotFoundError:
        raise images._missing(path, scene, what) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise images._undecodable(path, scene, what, str(err)) from None


def worker(decoder: str, capture: str, workspace: str) -> None:
    """One import, in this process, with the given decoder (called in a child process)."""
    from labelmaker.cli import main

    if decoder == "pil":
        from labelmaker.io import images

        images._read_frame = pil_read_frame
    sys.exit(main(["import", "posed_rgbd", capture, workspace, "progress=false"]))


def whole_process(decoder: str, capture: Path, n_frames: int, repeats: int) -> dict:
    best_wall, best_stage = float("inf"), float("inf")
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            ws = Path(tmp) / "ws"
            t0 = time.perf_counter()
            cmd = [sys.executable, __file__, "--worker", decoder, str(capture), str(ws)]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            best_wall = min(best_wall, time.perf_counter() - t0)
            record = json.loads((ws / "state" / "import.json").read_text())
            best_stage = min(best_stage, float(record.get("seconds") or record["timings"]["seconds"]))
    return {"process_s": round(best_wall, 2), "process_frames_per_s": round(n_frames / best_wall, 1),
            "stage_s": round(best_stage, 2), "stage_frames_per_s": round(n_frames / best_stage, 1)}


def best_ms(fn, items, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, (time.perf_counter() - t0) / len(items))
    return round(best * 1e3, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capture", type=Path, default=KITCHEN)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", nargs=3, metavar=("DECODER", "CAPTURE", "WORKSPACE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    import cv2
    from PIL import Image

    from labelmaker.io.images import _read_frame

    colors = sorted(args.capture.glob("*.color.jpg"))
    depths = sorted(args.capture.glob("*.depth.png"))
    n = len(colors)
    print(f"capture {args.capture} ({n} frames), best of {args.repeats}")
    results = {}
    for decoder in ("pil", "opencv"):
        results[decoder] = whole_process("pil" if decoder == "pil" else "cv2", args.capture, n, args.repeats)
        print(f"  import, whole process, {decoder:<6}: {results[decoder]}")
    for what, files in (("color", colors[:50]), ("depth", depths[:50])):
        pil = best_ms(lambda p: pil_read_frame(p, "bench", what), files, args.repeats)
        ocv = best_ms(lambda p: _read_frame(p, "bench", what), files, args.repeats)
        results[f"decode_{what}_ms"] = {"pil": pil, "opencv": ocv}
        print(f"  decode one {what} frame: PIL {pil} ms, OpenCV {ocv} ms")
    frame = _read_frame(colors[0], "bench", "color")
    big = np.ascontiguousarray(np.tile(frame, (3, 3, 1)))  # 1920x1440, an ARKit wide frame's size
    for name, image, size in (("640x480->513x385", frame, (513, 385)), ("1920x1440->640x480", big, (640, 480))):
        pil = best_ms(lambda im: np.array(Image.fromarray(im).resize(size, Image.Resampling.BILINEAR)), [image] * 20,
                      args.repeats)
        area = best_ms(lambda im: cv2.resize(im, size, interpolation=cv2.INTER_AREA), [image] * 20, args.repeats)
        linear = best_ms(lambda im: cv2.resize(im, size, interpolation=cv2.INTER_LINEAR), [image] * 20, args.repeats)
        results[f"resize_{name}_ms"] = {"pil_bilinear": pil, "opencv_area": area, "opencv_linear": linear}
        print(f"  resize {name}: PIL bilinear {pil} ms, OpenCV area {area} ms, OpenCV linear {linear} ms")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
