"""Synonyms of unified class names (data/synonyms.csv), for text prompts of open-vocabulary models.

A CLIP-style model recognises "sofa" as well as "couch"; prompting with several names per class
and averaging their embeddings makes the class's text embedding less dependent on one word.
"""
from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path

from .spaces import LabelTableError, unified_space

SYNONYMS = Path(__file__).with_name("data") / "synonyms.csv"


@lru_cache(maxsize=1)
def class_synonyms() -> dict[str, tuple[str, ...]]:
    """Unified class name -> its synonyms (the name itself not included); classes without a row have none."""
    known = set(unified_space().names)
    out: dict[str, tuple[str, ...]] = {}
    with open(SYNONYMS, newline="") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            name = row["name"].strip()
            if name not in known:
                raise LabelTableError(f"{SYNONYMS.name} line {line}: {name!r} is no unified class")
            out[name] = tuple(s.strip() for s in (row["synonyms"] or "").split(";") if s.strip() and s.strip() != name)
    return out
