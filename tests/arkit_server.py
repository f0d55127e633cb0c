"""A loopback HTTP server that serves synthetic ARKitScenes videos in the published layout,
with faults to inject per file: HTTP 500, a stall before the headers (client timeout), a stall
mid-body, a truncated body, corrupted bytes, an ignored Range header."""
from __future__ import annotations

import shutil
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

ZIPPED = ("lowres_wide", "lowres_depth", "confidence", "lowres_wide_intrinsics")


def pack_release(video_dir: Path, metadata_csv: Path, base: Path, split: str = "Validation") -> Path:
    """Lay out one synthetic video as the dataset publishes it: per-asset zips with
    `<asset>/<file>` entries, the traj and mesh as they are, raw/metadata.csv."""
    vid = video_dir.name
    out = base / "raw" / split / vid
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(metadata_csv, base / "raw" / "metadata.csv")
    for asset in ZIPPED:
        with zipfile.ZipFile(out / f"{asset}.zip", "w", zipfile.ZIP_STORED) as zf:
            for path in sorted((video_dir / asset).iterdir()):
                zf.write(path, f"{asset}/{path.name}")
    shutil.copy2(video_dir / "lowres_wide.traj", out / "lowres_wide.traj")
    shutil.copy2(video_dir / f"{vid}_3dod_mesh.ply", out / f"{vid}_3dod_mesh.ply")
    return out


class FaultyServer:
    """Serve `root` on 127.0.0.1; `faults[path]` is a list of faults used up one per request."""

    def __init__(self, root: Path, stall_s: float = 1.5):
        self.root = Path(root)
        self.stall_s = stall_s
        self.faults: dict[str, list[str]] = {}
        self.requests: list[tuple[str, str | None, str]] = []  # (path, Range header, fault or "")
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                server.handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def inject(self, path: str, *faults: str) -> None:
        self.faults.setdefault(path, []).extend(faults)

    def requests_for(self, suffix: str) -> list[tuple[str, str | None, str]]:
        return [r for r in self.requests if r[0].endswith(suffix)]

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        path = unquote(urlparse(h.path).path).lstrip("/")
        with self.lock:
            queue = self.faults.get(path, [])
            fault = queue.pop(0) if queue else ""
            self.requests.append((path, h.headers.get("Range"), fault))
        try:
            self._respond(h, path, fault)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _respond(self, h, path: str, fault: str) -> None:
        file = self.root / path
        if fault == "500":
            h.send_error(500, "injected")
            return
        if fault == "timeout":
            time.sleep(self.stall_s)
            return
        if not file.is_file():
            h.send_error(404)
            return
        data = file.read_bytes()
        if fault == "corrupt":
            mid = len(data) // 2
            data = data[:mid] + bytes(b ^ 0xFF for b in data[mid:mid + 64]) + data[mid + 64:]
        start = 0
        rng = h.headers.get("Range")
        if rng and fault != "ignore_range":
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{len(data)}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            h.send_response(200)
        body = data[start:]
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if fault == "truncate":
            h.wfile.write(body[: len(body) // 2])
            h.wfile.flush()
            h.close_connection = True
            return
        if fault == "stall_body":
            h.wfile.write(body[: len(body) // 3])
            h.wfile.flush()
            time.sleep(self.stall_s)
            return
        h.wfile.write(body)
