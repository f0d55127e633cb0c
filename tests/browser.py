"""Headless Chromium for tests that open the batch report in a real browser (Debian's `chromium`,
which scripts/setup_env.sh installs with apt-get when run as root for the test extras)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

NAMES = ("chromium", "chromium-browser", "google-chrome")


def chromium() -> str:
    """The browser's path; skips the test when there is none, unless LABELMAKER_REQUIRE_BROWSER=1
    (CI sets it: there the browser tests must run)."""
    for name in NAMES:
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("LABELMAKER_REQUIRE_BROWSER") == "1":
        pytest.fail(
            "headless Chromium is required (LABELMAKER_REQUIRE_BROWSER=1) but not installed: "
            "run scripts/setup_env.sh as root, or apt-get install chromium"
        )
    pytest.skip("headless Chromium is not installed (apt-get install chromium; scripts/setup_env.sh does it as root)")


def _run(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    cmd = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def dump_dom(url: str, profile: Path) -> str:
    """The page's DOM after its scripts ran (`chromium --headless --dump-dom`)."""
    done = _run(["--dump-dom", url], profile)
    assert done.returncode == 0 and "<html" in done.stdout, (
        f"chromium failed ({done.returncode}): {done.stderr[-2000:]}"
    )
    return done.stdout


def screenshot(url: str, out: Path, profile: Path, size: tuple[int, int] = (1400, 1800)) -> Path:
    done = _run([f"--screenshot={out}", f"--window-size={size[0]},{size[1]}", url], profile)
    assert done.returncode == 0 and out.exists(), f"chromium failed ({done.returncode}): {done.stderr[-2000:]}"
    return out
