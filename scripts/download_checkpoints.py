#!/usr/bin/env python
"""Download model checkpoints listed in labelmaker/checkpoints.csv (needs internet).

    python scripts/download_checkpoints.py                         # list the manifest
    python scripts/download_checkpoints.py mask2former_swin-l_ade20k sam_vit_h --dir /ckpt
    python scripts/download_checkpoints.py --all --dir /ckpt

The folder defaults to $LABELMAKER_CHECKPOINT_DIR, else ./checkpoints (as configs/config.yaml's
checkpoints.dir). Interrupted downloads resume; finished files are checked against the published
sha256 where there is one. Afterwards `labelmaker doctor models=...` checks the configured ones.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from labelmaker.errors import LabelmakerError
from labelmaker.checkpoints import ENV_DIR, manifest
from labelmaker.segmenters.download import download


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="*", help="manifest model names")
    p.add_argument("--all", action="store_true", help="every model in the manifest")
    p.add_argument("--dir", default=os.environ.get(ENV_DIR, "checkpoints"), help="checkpoint folder")
    args = p.parse_args(argv)
    known = manifest()
    if not args.models and not args.all:
        for e in known.values():
            what = f"{e.file}/ ({len(e.folder_files)} files)" if e.folder_files else e.file
            print(f"{e.model:<36} {what}\n{'':<36} {e.licence}; sha256 {e.sha256 or 'not published'}")
        return 0
    names = list(known) if args.all else args.models
    unknown = [n for n in names if n not in known]
    if unknown:
        print(f"unknown model(s): {', '.join(unknown)}; known: {', '.join(known)}", file=sys.stderr)
        return 2
    folder, results, failed = Path(args.dir).expanduser(), {}, 0
    for name in names:
        e = known[name]
        what = f"{len(e.folder_files)} files into {folder / e.file}/" if e.folder_files else f"{folder / e.file}"
        print(f"{name}: {what}")
        try:
            results[name] = download(e, folder)
        except (LabelmakerError, OSError) as err:
            results[name] = f"FAILED: {err}"
            failed += 1
    print(f"\ncheckpoints in {folder}:")
    for name, result in results.items():
        print(f"  {name:<28} {result}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
