"""What batch tests read back: `labelmaker status --json`, and the submissions in the journal."""
from __future__ import annotations

import json
from collections import Counter
from contextlib import redirect_stdout
from io import StringIO

from labelmaker.cli import main
from labelmaker.pipeline.batch_folder import BatchFolder


def status_json(out) -> dict:
    buf = StringIO()
    with redirect_stdout(buf):
        assert main(["status", str(out), "--json"]) == 0
    return json.loads(buf.getvalue())


def submissions(out) -> Counter:
    """(scene, stage) -> how many times it was submitted, from the journal."""
    n = Counter()
    for line in BatchFolder(out).journal_path.read_text().splitlines():
        if line.strip():
            event = json.loads(line)
            if event["event"] == "submit":
                n.update((scene, event["stage"]) for scene in event["scenes"])
    return n
