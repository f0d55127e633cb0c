"""Fetch one ARKitScenes video's raw assets over HTTP, in the dataset's published layout.

The layout (as the dataset's own download script uses it) is

    <base_url>/raw/metadata.csv                          video_id, visit_id, sky_direction, ...
    <base_url>/raw/<split>/<video_id>/lowres_wide.zip    lowres_wide/<video_id>_<t>.png
    <base_url>/raw/<split>/<video_id>/lowres_depth.zip   (also confidence.zip,
                                                          lowres_wide_intrinsics.zip, ...)
    <base_url>/raw/<split>/<video_id>/lowres_wide.traj
    <base_url>/raw/<split>/<video_id>/<video_id>_3dod_mesh.ply

and is mirrored locally as <out>/raw/<split>/<video_id>/ (zips extracted there) plus
<out>/raw/metadata.csv, which the arkitscenes importer finds two folders above the video.

Why each rule:
- a file is written to `.<name>.part` and renamed only when complete and verified, so an
  interrupted download never looks finished, and the next run resumes it with an HTTP Range;
- sizes come from Content-Length / Content-Range; checksums from an optional sha256 manifest
  (the dataset publishes none) and, for zips, the CRC32 of every member;
- transient failures (5xx, 429, timeouts, dropped connections, short bodies) are retried with
  exponential backoff; a 404 is permanent (some videos lack the mesh and traj);
- a zip is extracted into a temporary folder and renamed into place, so a half-extracted
  asset folder never exists under its final name.
"""
from __future__ import annotations

import csv
import http.client
import logging
import os
import re
import shutil
import socket
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Optional

from tqdm import tqdm

from ..digests import crc32_of, sha256_of
from ..errors import BadInputError, LabelmakerError
from .arkit_layout import CONFIDENCE_DIR, DEPTH_DIR, METADATA_CSV, TRAJ_FILE, annotation_file, intrinsics_dir, mesh_file

log = logging.getLogger(__name__)

PUBLIC_BASE_URL = "https://docs-assets.developer.apple.com/ml-research/datasets/arkitscenes/v1"
ZIP_ASSETS = ("lowres_wide", "lowres_depth", "confidence", "lowres_wide_intrinsics", "vga_wide",
              "vga_wide_intrinsics", "wide", "wide_intrinsics", "ultrawide", "ultrawide_intrinsics",
              "highres_depth")
OPTIONAL_ASSETS = ("mesh", "annotation")  # absent for some videos; the importer copes
TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}


@dataclass
class DownloadConfig:
    base_url: str = PUBLIC_BASE_URL  # the dataset's root; a mirror or a test server works the same
    split: str = "Validation"  # Training | Validation
    assets: list[str] = field(default_factory=lambda: [
        "lowres_wide", DEPTH_DIR, CONFIDENCE_DIR, intrinsics_dir("lowres_wide"), TRAJ_FILE, "mesh"])
    metadata: bool = True  # also fetch raw/metadata.csv (sky_direction for the importer)
    checksums: Optional[str] = None  # sha256sum-style manifest: "<sha256>  <path below base_url>"
    retries: int = 5  # further tries per file after the first, for transient errors
    backoff_s: float = 2.0  # wait before retry k: backoff_s * 2**(k-1), at most backoff_max_s
    backoff_max_s: float = 60.0
    timeout_s: float = 60.0  # per connection attempt and per read
    chunk_bytes: int = 1 << 20
    keep_zip: bool = False  # keep the archives after extracting them
    root: Optional[str] = None  # `batch --download`: gets raw/<split>/<video_id>/; null = the batch's out root


class DownloadError(LabelmakerError):
    """A file could not be fetched or verified after all retries (a retry later may help)."""

    error_class = "crashed"
    exit_code = 1


class _Transient(Exception):
    """One attempt failed in a way a retry can fix."""


class _Corrupt(_Transient):
    """The bytes arrived but are wrong (checksum/CRC): the partial file must go."""


@dataclass
class FileResult:
    name: str  # path below the video folder (or raw/ for metadata.csv)
    status: str  # downloaded | resumed | present | missing
    bytes: int = 0  # bytes transferred in this run
    attempts: int = 0


@dataclass
class DownloadSummary:
    video_id: str
    video_dir: Path
    metadata_csv: Optional[Path]
    files: list[FileResult]
    seconds: float

    @property
    def bytes(self) -> int:
        return sum(f.bytes for f in self.files)

    @property
    def retries(self) -> int:
        return sum(max(0, f.attempts - 1) for f in self.files)


# ----------------------------------------------------------------------------- layout


def remote_name(asset: str, video_id: str) -> str:
    """The file name of one asset in the published layout."""
    if asset in ZIP_ASSETS:
        return f"{asset}.zip"
    named = {TRAJ_FILE: TRAJ_FILE, "mesh": mesh_file(video_id), "annotation": annotation_file(video_id),
             "mov": f"{video_id}.mov"}
    if asset not in named:
        raise LabelmakerError(f"unknown ARKitScenes asset {asset!r}; known: {', '.join((*ZIP_ASSETS, *named))}")
    return named[asset]


def video_url(cfg: DownloadConfig, video_id: str, name: str) -> str:
    return f"{cfg.base_url.rstrip('/')}/raw/{cfg.split}/{video_id}/{name}"


def local_video_dir(out_root: str | Path, split: str, video_id: str) -> Path:
    """Where a video goes locally: the published layout below `out_root`."""
    return Path(out_root) / "raw" / split / str(video_id)


def parse_video_dir(video_dir: str | Path) -> tuple[Path, str, str]:
    """(out_root, split, video_id) of a folder `local_video_dir` made. A downloading batch keeps
    one path per scene (its capture folder, which import reads); the download stage reads which
    video and split to fetch from it, so the scene list needs no second place for them."""
    video_dir = Path(video_dir)
    if video_dir.parent.parent.name != "raw":
        raise LabelmakerError(f"{video_dir} is not a video folder of the layout <root>/raw/<split>/<video_id>")
    return video_dir.parent.parent.parent, video_dir.parent.name, video_dir.name


def read_manifest(path: str | None) -> dict[str, str]:
    """`sha256  relative/path` lines -> {relative/path: sha256}."""
    if not path:
        return {}
    out = {}
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and re.fullmatch(r"[0-9a-fA-F]{64}", parts[0]):
            out[parts[1].lstrip("*")] = parts[0].lower()
    return out


def backoff_delay(cfg: DownloadConfig, retry: int) -> float:
    """Seconds to wait before retry number `retry` (1, 2, ...)."""
    return min(cfg.backoff_max_s, cfg.backoff_s * 2 ** (retry - 1))


# ----------------------------------------------------------------------------- one file


def _part_path(final: Path, shared: bool = False) -> Path:
    if shared:  # one per process: parallel batch tasks never append to one file
        return final.with_name(f".{final.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.part")
    return final.with_name(f".{final.name}.part")


def _check_zip(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except zipfile.BadZipFile as err:
        raise _Corrupt(f"not a valid zip ({err})") from None
    if bad is not None:
        raise _Corrupt(f"CRC mismatch in member {bad}")


def _one_attempt(url: str, part: Path, cfg: DownloadConfig, bar: tqdm) -> tuple[int, bool]:
    """GET url into `part`, continuing from its current size. Returns (bytes received, resumed).
    Raises _Transient for what a retry can fix, urllib.error.HTTPError for the rest."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=cfg.timeout_s)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing after `have`: complete, or a stale longer file
            total = re.search(r"/(\d+)", err.headers.get("Content-Range", "") or "")
            if total and int(total.group(1)) == have:
                return 0, True
            part.unlink()
            raise _Transient(f"range {have}- not satisfiable; starting over") from None
        if err.code in TRANSIENT_HTTP:
            raise _Transient(f"HTTP {err.code}") from None
        raise
    except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, http.client.HTTPException) as err:
        raise _Transient(f"{type(err).__name__}: {getattr(err, 'reason', err)}") from None

    with response:
        resumed = response.status == 206
        if resumed:
            match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != have:
                part.unlink(missing_ok=True)
                raise _Transient("server answered a different range; starting over")
            total = None if match.group(2) == "*" else int(match.group(2))
        else:  # a full body: the server ignored the range (or there was none)
            have = 0
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None else None
        bar.reset(total=total)
        bar.update(have)
        received = 0
        with open(part, "ab" if resumed else "wb") as fh:
            try:
                while True:
                    block = response.read(cfg.chunk_bytes)
                    if not block:
                        break
                    fh.write(block)
                    received += len(block)
                    bar.update(len(block))
            except (socket.timeout, TimeoutError, ConnectionError, http.client.HTTPException) as err:
                raise _Transient(f"{type(err).__name__} after {have + received} bytes") from None
    size = part.stat().st_size
    if total is not None and size != total:
        if size > total:
            part.unlink()
        raise _Transient(f"short body: {size} of {total} bytes")
    return received, resumed


def fetch_file(url: str, final: Path, cfg: DownloadConfig, sha256: str | None = None,
               progress: bool = True, sleep: Callable[[float], None] = time.sleep, shared: bool = False) -> FileResult:
    """Download `url` to `final` (resuming a partial `.part`), verify it, rename it into place.

    `shared`: a file that the downloads of several videos need (raw/metadata.csv), which
    parallel batch tasks may fetch at the same moment: each writes its own part file (not
    resumed; such files are small) and the last complete copy's rename wins."""
    final = Path(final)
    if final.exists():
        return FileResult(final.name, "present")
    final.parent.mkdir(parents=True, exist_ok=True)
    part = _part_path(final, shared)
    try:
        return _fetch_with_retries(url, final, part, cfg, sha256, progress, sleep, resumable=not shared)
    finally:
        if shared:
            part.unlink(missing_ok=True)


def _fetch_with_retries(url: str, final: Path, part: Path, cfg: DownloadConfig, sha256: str | None,
                        progress: bool, sleep: Callable[[float], None], resumable: bool = True) -> FileResult:
    result = FileResult(final.name, "downloaded")
    last_problem = ""
    with tqdm(desc=final.name, unit="B", unit_scale=True, disable=not progress, leave=False) as bar:
        for attempt in range(1, cfg.retries + 2):
            result.attempts = attempt
            if attempt > 1:
                delay = backoff_delay(cfg, attempt - 1)
                log.info(
                    "retrying %s in %.1fs (attempt %d of %d): %s", url, delay, attempt, cfg.retries + 1, last_problem
                )
                sleep(delay)
            try:
                received, resumed = _one_attempt(url, part, cfg, bar)
                result.bytes += received
                if resumed:
                    result.status = "resumed"
                if sha256 and sha256_of(part) != sha256:
                    raise _Corrupt("sha256 differs from the manifest")
                if final.suffix == ".zip":
                    _check_zip(part)
            except _Corrupt as err:
                part.unlink(missing_ok=True)
                last_problem = str(err)
                continue
            except _Transient as err:
                last_problem = str(err)
                continue
            part.replace(final)
            return result
    again = f"run it again to resume from {part}" if resumable and part.exists() else "run it again later"
    raise DownloadError(f"{url}: failed after {cfg.retries + 1} attempts ({last_problem}); {again}")


# ----------------------------------------------------------------------------- zips


def _safe_members(zf: zipfile.ZipFile, zip_path: Path) -> list[zipfile.ZipInfo]:
    members = zf.infolist()
    for info in members:
        p = PurePosixPath(info.filename)
        if p.is_absolute() or ".." in p.parts:
            raise BadInputError(
                zip_path.parent.name,
                zip_path,
                f"archive member {info.filename!r} points outside the folder",
                "re-download the archive from the dataset",
            )
    return members


def extract_asset(zip_path: Path, asset: str) -> Path:
    """Extract `<asset>.zip` to `<video dir>/<asset>/` through a temporary folder and a rename.
    The archives hold `<asset>/<file>` entries; archives with bare files are accepted too."""
    video_dir = zip_path.parent
    final = video_dir / asset
    tmp = video_dir / f".{asset}.extract-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(tmp, members=_safe_members(zf, zip_path))
        top = [p for p in tmp.iterdir()]
        source = tmp / asset if len(top) == 1 and top[0].name == asset and top[0].is_dir() else tmp
        source.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def remove_stale_extractions(video_dir: Path) -> int:
    """Temporary folders of extractions a killed run left behind."""
    stale = list(video_dir.glob(".*.extract-*")) if video_dir.exists() else []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return len(stale)


# ----------------------------------------------------------------------------- one video


def download_video(video_id: str, out_root: str | Path, cfg: DownloadConfig, progress: bool = True,
                   sleep: Callable[[float], None] = time.sleep) -> DownloadSummary:
    """Fetch `cfg.assets` of one video into <out_root>/raw/<split>/<video_id>/ (and
    raw/metadata.csv). Finished assets are skipped, so running it again resumes."""
    t0 = time.perf_counter()
    video_dir = local_video_dir(out_root, cfg.split, str(video_id))
    raw = video_dir.parent.parent
    video_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_extractions(video_dir)
    manifest = read_manifest(cfg.checksums)
    results: list[FileResult] = []

    metadata = None
    if cfg.metadata:
        metadata = raw / METADATA_CSV
        url = f"{cfg.base_url.rstrip('/')}/raw/{METADATA_CSV}"
        try:
            results.append(
                fetch_file(url, metadata, cfg, manifest.get(f"raw/{METADATA_CSV}"), progress, sleep, shared=True)
            )
        except DownloadError as err:
            raise DownloadError(f"video {video_id}: {err}") from None
        except urllib.error.HTTPError as err:
            raise BadInputError(str(video_id), url, f"the server answered HTTP {err.code}",
                                "check download.base_url, or set download.metadata=false") from None
        results[-1].name = "raw/metadata.csv"

    for asset in tqdm(cfg.assets, desc=f"video {video_id}", unit="asset", disable=not progress):
        name = remote_name(asset, str(video_id))
        is_zip = name.endswith(".zip")
        if is_zip and (video_dir / asset).is_dir():
            if not cfg.keep_zip:  # a run killed between extracting and deleting the archive
                (video_dir / name).unlink(missing_ok=True)
            results.append(FileResult(f"{asset}/", "present"))
            continue
        rel = f"raw/{cfg.split}/{video_id}/{name}"
        try:
            result = fetch_file(
                video_url(cfg, str(video_id), name), video_dir / name, cfg, manifest.get(rel), progress, sleep
            )
        except DownloadError as err:
            raise DownloadError(f"video {video_id}: {err}") from None
        except urllib.error.HTTPError as err:
            if err.code == 404 and asset in OPTIONAL_ASSETS:
                results.append(FileResult(name, "missing"))
                continue
            raise BadInputError(
                str(video_id),
                video_url(cfg, str(video_id), name),
                f"the server answered HTTP {err.code}",
                f"check the video id, download.split={cfg.split} and download.base_url",
            ) from None
        if is_zip:
            extract_asset(video_dir / name, asset)
            if not cfg.keep_zip:
                (video_dir / name).unlink()
            result.name = f"{asset}/ (from {name})"
        results.append(result)
    return DownloadSummary(str(video_id), video_dir, metadata, results, time.perf_counter() - t0)


def local_manifest(video_dir: Path, assets: list[str], metadata_csv: Optional[Path]) -> list[tuple[str, int, int]]:
    """(path, size, CRC32) of every file the download of `assets` left for a video (extracted
    asset folders, traj, mesh) and of metadata.csv, sorted. Read from disk, not from the
    transfer, so a resumed download and a clean one describe the same files alike; CRC32 is
    what the archives vouch for their members with. Other files in the video folder (kept
    archives, part files, a ground truth put there) are not what was fetched."""
    video_dir = Path(video_dir)
    paths = []
    for asset in assets:
        name = remote_name(asset, video_dir.name)
        if name.endswith(".zip"):
            folder = video_dir / asset
            paths += [p for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []
        elif (video_dir / name).is_file():
            paths.append(video_dir / name)
    out = [(p.relative_to(video_dir).as_posix(), p.stat().st_size, crc32_of(p)) for p in paths]
    if metadata_csv is not None and Path(metadata_csv).is_file():
        out.append(("../../metadata.csv", Path(metadata_csv).stat().st_size, crc32_of(Path(metadata_csv))))
    return sorted(out)


# ----------------------------------------------------------------------------- many videos


def _video_id(text: str) -> str:
    """Video ids are integers; some CSVs store them as floats ("41069021.0")."""
    text = text.strip()
    return str(int(float(text))) if re.fullmatch(r"\d+(\.0*)?", text) else text


def read_video_list(path: str | Path, default_split: str) -> list[tuple[str, str]]:
    """(video_id, split) pairs from a CSV with a `video_id` column and optionally `fold`
    (the dataset's *_splits.csv files), or from a plain list with one video id per line."""
    path = Path(path)
    text = path.read_text()
    first = text.splitlines()[0] if text.strip() else ""
    if "video_id" in first.split(","):
        rows = list(csv.DictReader(text.splitlines()))
        return [(_video_id(r["video_id"]), r.get("fold") or default_split) for r in rows]
    return [(line.strip(), default_split) for line in text.splitlines() if line.strip() and not line.startswith("#")]


def download_videos(videos: list[tuple[str, str]], out_root: str | Path, cfg: DownloadConfig, progress: bool = True,
                    sleep: Callable[[float], None] = time.sleep) -> tuple[list[DownloadSummary], dict[str, str]]:
    """Download each (video_id, split); one video's failure does not stop the others.
    Returns the summaries of the finished videos and {video_id: error message} of the others."""
    from dataclasses import replace

    done, failed = [], {}
    for video_id, split in tqdm(videos, desc="videos", unit="video", disable=not progress or len(videos) < 2):
        try:
            done.append(download_video(video_id, out_root, replace(cfg, split=split), progress, sleep))
        except LabelmakerError as err:
            failed[video_id] = f"{type(err).__name__}: {err}"
            log.warning("video %s failed: %s", video_id, err)
    return done, failed
