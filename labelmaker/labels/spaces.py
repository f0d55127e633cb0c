"""Label spaces and the mappings between them, loaded from the CSV tables in ``data/``.

Every class id, name, synset, colour and mapping lives in the tables; this module only parses
and checks them (once, cached) and answers questions about them. See ``README.md`` next to this
file for what each table holds and how to edit it.
"""

from __future__ import annotations

import colorsys
import csv
import difflib
import functools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).resolve().parent / "data"

UNKNOWN: int = 0
SPACES: tuple[str, ...] = ("unified", "scannet200", "nyu40", "scannet20", "ade20k", "coco_panoptic")
EXPORT_TARGETS: tuple[str, ...] = ("scannet200", "nyu40", "scannet20")

_SPACES_FILE = "spaces.csv"
_UNIFIED = "unified"
_UNKNOWN_NAME = "unknown"
_UNLABELLED_NAME = "unlabelled"
_TARGET_SEP = ";"
_SYNSET_RE = re.compile(r"^[a-z0-9][a-z0-9_.'/-]*\.n\.\d{2}$")


class LabelTableError(ValueError):
    """A label table is malformed; the message names the file and the row."""


# --------------------------------------------------------------------------------------------
# public dataclasses


@dataclass(frozen=True, eq=False)
class LabelSpace:
    """The classes of one label space. ``ids`` excludes the unlabelled id (unified: 0 is a class)."""

    name: str
    ids: np.ndarray
    names: tuple[str, ...]
    unlabelled_id: int | None
    max_id: int

    @functools.cached_property
    def _name_by_id(self) -> dict[int, str]:
        return {int(i): n for i, n in zip(self.ids, self.names)}

    @functools.cached_property
    def _id_by_name(self) -> dict[str, int]:
        return {n.lower(): int(i) for i, n in zip(self.ids, self.names)}

    @functools.cached_property
    def _valid(self) -> np.ndarray:
        valid = np.zeros(self.max_id + 1, dtype=bool)
        valid[self.ids] = True
        if self.unlabelled_id is not None:
            valid[self.unlabelled_id] = True
        return valid

    def __len__(self) -> int:
        return len(self.ids)

    def name_of(self, class_id: int) -> str:
        """Name of ``class_id``; the unlabelled id (where it is no class) is ``"unlabelled"``."""
        cid = int(class_id)
        name = self._name_by_id.get(cid)
        if name is not None:
            return name
        if self.unlabelled_id is not None and cid == self.unlabelled_id:
            return _UNLABELLED_NAME
        raise KeyError(f"{cid} is no class id of label space {self.name!r} "
                       f"(ids {int(self.ids[0])}..{self.max_id}, {len(self.ids)} classes)")

    def id_of(self, name: str) -> int:
        """Class id of ``name`` (case and surrounding spaces ignored)."""
        key = str(name).strip().lower()
        cid = self._id_by_name.get(key)
        if cid is not None:
            return cid
        if self.unlabelled_id is not None and key == _UNLABELLED_NAME:
            return self.unlabelled_id
        close = difflib.get_close_matches(key, list(self._id_by_name), n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise KeyError(f"{name!r} is no class of label space {self.name!r}{hint}")

    def only_valid_ids(self, ids: np.ndarray) -> bool:
        """Whether every value of integer ``ids`` is a class id or the unlabelled id: one bincount
        over a whole stack of label maps (invalid_ids says which values are not, frame by frame)."""
        ids = np.asarray(ids)
        if ids.dtype.kind not in "ui":
            return False
        if ids.size == 0:
            return True
        if int(ids.min()) < 0 or int(ids.max()) > self.max_id:
            return False
        seen = np.bincount(ids.reshape(-1), minlength=self.max_id + 1) > 0
        return not (seen & ~self._valid[: self.max_id + 1]).any()

    def invalid_ids(self, ids: np.ndarray) -> np.ndarray:
        """Sorted unique values of ``ids`` that are neither class ids nor the unlabelled id."""
        values = np.unique(np.asarray(ids))
        if values.size == 0:
            return values.astype(np.int64)
        if not np.issubdtype(values.dtype, np.integer):
            whole = np.isfinite(values) & (values == np.round(values))
            bad = values[~whole]
            ints = values[whole]
        else:
            bad = values[:0]
            ints = values
        in_range = (ints >= 0) & (ints <= self.max_id)
        ok = np.zeros(ints.shape, dtype=bool)
        ok[in_range] = self._valid[ints[in_range].astype(np.int64)]
        out = np.concatenate([bad, ints[~ok]])
        out.sort()
        if np.issubdtype(out.dtype, np.integer):
            return out.astype(np.int64)
        return out


@dataclass(frozen=True, eq=False)
class UnifiedSpace(LabelSpace):
    """The unified space: ids 0..K-1, 0 = unknown; a WordNet synset key and a colour per class."""

    wordnet: tuple[str, ...]
    colors: np.ndarray


@dataclass(frozen=True, eq=False)
class LabelMapping:
    """Source class id -> unified class ids, as CSR rows indexed by source id."""

    source: str
    offsets: np.ndarray
    targets: np.ndarray

    def targets_of(self, source_id: int) -> np.ndarray:
        sid = int(source_id)
        if not 0 <= sid < len(self.offsets) - 1:
            raise KeyError(f"{sid} is outside the ids of label space {self.source!r} "
                           f"(0..{len(self.offsets) - 2})")
        return self.targets[self.offsets[sid]:self.offsets[sid + 1]]


# --------------------------------------------------------------------------------------------
# loading


@dataclass(frozen=True, eq=False)
class LabelTables:
    """Everything in one data folder, parsed and checked."""

    data_dir: Path
    spaces: dict[str, LabelSpace]
    mappings: dict[str, LabelMapping]
    exports: dict[str, np.ndarray]
    sources: dict[str, str]


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


class _Rows:
    """Rows of one CSV file with their line numbers, for error messages."""

    def __init__(self, path: Path, required: tuple[str, ...]):
        self.path = path
        if not path.is_file():
            raise LabelTableError(f"{path}: label table missing")
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in required if c not in header]
            if missing:
                raise LabelTableError(f"{path}: header {header} lacks column(s) {missing}")
            reader.fieldnames = header
            self.rows: list[tuple[int, dict[str, str]]] = []
            for row in reader:
                if None in row:  # more cells than header columns
                    raise LabelTableError(f"{path}:{reader.line_num}: more cells than columns {header}")
                clean = {k: (v or "").strip() for k, v in row.items()}
                if not any(clean.values()):
                    continue
                self.rows.append((reader.line_num, clean))
        if not self.rows:
            raise LabelTableError(f"{path}: no rows")

    def error(self, line: int, msg: str) -> LabelTableError:
        return LabelTableError(f"{self.path}:{line}: {msg}")

    def int_cell(self, line: int, row: dict[str, str], col: str, lo: int = 0,
                 hi: int | None = None, empty: int | None = None) -> int:
        text = row[col]
        if text == "" and empty is not None:
            return empty
        try:
            value = int(text)
        except ValueError:
            raise self.error(line, f"column {col!r}: {text!r} is not an integer") from None
        if value < lo or (hi is not None and value > hi):
            rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
            raise self.error(line, f"column {col!r}: {value} outside {rng}")
        return value


def _read_space(name: str, rows: _Rows, unlabelled_id: int | None) -> tuple[np.ndarray, tuple[str, ...]]:
    ids, names, seen_ids, seen_names = [], [], {}, {}
    for line, row in rows.rows:
        cid = rows.int_cell(line, row, "id")
        cname = row["name"]
        if not cname:
            raise rows.error(line, "empty class name")
        if cid in seen_ids:
            raise rows.error(line, f"id {cid} repeats line {seen_ids[cid]}")
        key = cname.lower()
        if key in seen_names:
            raise rows.error(line, f"name {cname!r} repeats line {seen_names[key]}")
        if name != _UNIFIED and unlabelled_id is not None and cid == unlabelled_id:
            raise rows.error(line, f"id {cid} is the unlabelled id of {name!r}, not a class")
        if key == _UNLABELLED_NAME:
            raise rows.error(line, f"{_UNLABELLED_NAME!r} is reserved for the unlabelled id")
        seen_ids[cid], seen_names[key] = line, line
        ids.append(cid)
        names.append(cname)
    order = np.argsort(ids, kind="stable")
    return (_frozen(np.asarray(ids, dtype=np.int64)[order]), tuple(names[i] for i in order))


def _parse_targets(rows: _Rows, line: int, cell: str, unified_ids: dict[str, int],
                   column: str = "unified") -> list[int]:
    out: list[int] = []
    for part in cell.split(_TARGET_SEP):
        tname = part.strip().lower()
        if not tname:
            if part.strip() == "" and cell.strip() != "":
                raise rows.error(line, f"column {column!r}: empty name in {cell!r}")
            continue
        tid = unified_ids.get(tname)
        if tid is None:
            close = difflib.get_close_matches(tname, list(unified_ids), n=3)
            hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
            raise rows.error(line, f"column {column!r}: unknown unified class {part.strip()!r}{hint}")
        if tid == UNKNOWN:
            raise rows.error(line, f"column {column!r}: {_UNKNOWN_NAME!r} cannot be a target; "
                             "leave the cell empty to vote for nothing")
        if tid in out:
            raise rows.error(line, f"column {column!r}: {part.strip()!r} listed twice")
        out.append(tid)
    return out


def _load_unified(path: Path) -> tuple[UnifiedSpace, _Rows]:
    rows = _Rows(path, ("id", "name", "wordnet", "r", "g", "b", *EXPORT_TARGETS))
    ids, names = _read_space(_UNIFIED, rows, UNKNOWN)
    if not np.array_equal(ids, np.arange(len(ids))):
        raise LabelTableError(f"{path}: unified ids must be 0..K-1 without gaps")
    by_id = {rows.int_cell(line, row, "id"): (line, row) for line, row in rows.rows}
    if names[UNKNOWN] != _UNKNOWN_NAME:
        raise rows.error(by_id[UNKNOWN][0], f"id {UNKNOWN} must be {_UNKNOWN_NAME!r}")
    wordnet, colors, seen_syn, seen_col = [], [], {}, {}
    for cid in range(len(ids)):
        line, row = by_id[cid]
        if row["name"] != row["name"].lower():
            raise rows.error(line, f"unified names are lower-case: {row['name']!r}")
        syn = row["wordnet"]
        if not _SYNSET_RE.match(syn):
            raise rows.error(line, f"column 'wordnet': {syn!r} is no WordNet noun synset key "
                             "like 'chair.n.01'")
        if syn in seen_syn:
            raise rows.error(line, f"synset {syn!r} repeats line {seen_syn[syn]}")
        rgb = tuple(rows.int_cell(line, row, c, 0, 255) for c in "rgb")
        if rgb in seen_col:
            raise rows.error(line, f"colour {rgb} repeats line {seen_col[rgb]}")
        seen_syn[syn], seen_col[rgb] = line, line
        wordnet.append(syn)
        colors.append(rgb)
    space = UnifiedSpace(name=_UNIFIED, ids=ids, names=names, unlabelled_id=UNKNOWN,
                         max_id=int(ids[-1]), wordnet=tuple(wordnet),
                         colors=_frozen(np.asarray(colors, dtype=np.uint8)))
    return space, rows


def load_tables(data_dir: str | Path = DATA_DIR) -> LabelTables:
    """Parse and check every table in ``data_dir`` (the package's own by default)."""
    data_dir = Path(data_dir)
    meta = _Rows(data_dir / _SPACES_FILE, ("name", "file", "unlabelled_id"))
    listed = [row["name"] for _, row in meta.rows]
    if tuple(listed) != SPACES:
        raise LabelTableError(f"{meta.path}: spaces {listed} differ from {list(SPACES)}")
    info = {row["name"]: (line, row) for line, row in meta.rows}

    line, row = info[_UNIFIED]
    if meta.int_cell(line, row, "unlabelled_id", empty=-1) != UNKNOWN:
        raise meta.error(line, f"the unified space's unlabelled id is {UNKNOWN} (unknown)")
    unified, urows = _load_unified(data_dir / row["file"])
    unified_ids = {n.lower(): int(i) for i, n in zip(unified.ids, unified.names)}
    n_unified = len(unified.ids)

    spaces: dict[str, LabelSpace] = {_UNIFIED: unified}
    mappings: dict[str, LabelMapping] = {}
    sources: dict[str, str] = {name: info[name][1].get("source", "") for name in SPACES}
    for name in SPACES[1:]:
        line, row = info[name]
        unl = meta.int_cell(line, row, "unlabelled_id", empty=-1)
        unlabelled = None if unl < 0 else unl
        rows = _Rows(data_dir / row["file"], ("id", "name", "unified"))
        ids, names = _read_space(name, rows, unlabelled)
        max_id = int(max(ids[-1], unlabelled if unlabelled is not None else 0))
        per_id: dict[int, list[int]] = {}
        for rline, r in rows.rows:
            per_id[int(r["id"])] = _parse_targets(rows, rline, r["unified"], unified_ids)
        counts = np.zeros(max_id + 1, dtype=np.int64)
        for cid, t in per_id.items():
            counts[cid] = len(t)
        offsets = np.zeros(max_id + 2, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        targets = np.zeros(int(offsets[-1]), dtype=np.int64)
        for cid, t in per_id.items():
            targets[offsets[cid]:offsets[cid + 1]] = t
        spaces[name] = LabelSpace(name=name, ids=ids, names=names, unlabelled_id=unlabelled,
                                  max_id=max_id)
        mappings[name] = LabelMapping(source=name, offsets=_frozen(offsets),
                                      targets=_frozen(targets))

    offsets = np.zeros(n_unified + 1, dtype=np.int64)
    offsets[2:] = np.arange(1, n_unified)
    mappings[_UNIFIED] = LabelMapping(source=_UNIFIED, offsets=_frozen(offsets),
                                      targets=_frozen(np.arange(1, n_unified, dtype=np.int64)))

    exports: dict[str, np.ndarray] = {}
    by_id = {int(r["id"]): (line, r) for line, r in urows.rows}
    for target in EXPORT_TARGETS:
        space = spaces[target]
        out = np.zeros(n_unified, dtype=np.int64)
        for cid in range(n_unified):
            line, r = by_id[cid]
            value = urows.int_cell(line, r, target)
            if value != 0 and value not in space._name_by_id:
                raise urows.error(line, f"column {target!r}: {value} is no class id of {target!r}")
            if cid == UNKNOWN and value != 0:
                raise urows.error(line, f"column {target!r}: {_UNKNOWN_NAME!r} exports as 0")
            out[cid] = value
        exports[target] = _frozen(out)
    return LabelTables(data_dir=data_dir, spaces=spaces, mappings=mappings, exports=exports,
                       sources=sources)


@functools.cache
def _tables() -> LabelTables:
    return load_tables(DATA_DIR)


def _check_space(name: str, allowed: tuple[str, ...] = SPACES) -> str:
    if name not in allowed:
        raise ValueError(f"unknown label space {name!r}; known: {', '.join(allowed)}")
    return name


# --------------------------------------------------------------------------------------------
# public functions


def label_space(name: str) -> LabelSpace:
    """The label space ``name`` (one of ``SPACES``); parsed once and cached."""
    return _tables().spaces[_check_space(name)]


def unified_space() -> UnifiedSpace:
    space = _tables().spaces[_UNIFIED]
    assert isinstance(space, UnifiedSpace)
    return space


def class_aliases(name: str) -> dict[int, tuple[str, ...]]:
    """Per class id of space ``name``: its name, then the names in the table's other ``*_name``
    columns (``;``-separated, e.g. ADE20K's ``object150_name``): what a model's own class list
    may call it. Unified: the names only."""
    space = label_space(name)
    aliases = {int(i): [n] for i, n in zip(space.ids, space.names)}
    if name != _UNIFIED:
        meta = {row["name"]: row for _, row in _Rows(DATA_DIR / _SPACES_FILE, ("name", "file")).rows}
        rows = _Rows(DATA_DIR / meta[name]["file"], ("id", "name"))
        for _, row in rows.rows:
            for col, cell in row.items():
                if col.endswith("_name") and cell:
                    aliases[int(row["id"])] += [a.strip() for a in cell.split(_TARGET_SEP) if a.strip()]
    return {i: tuple(dict.fromkeys(a)) for i, a in aliases.items()}


def mapping_to_unified(source: str) -> LabelMapping:
    """Which unified classes each class of ``source`` stands for ("unified": identity, 0 -> none)."""
    return _tables().mappings[_check_space(source)]


@functools.cache
def _from_unified(target: str) -> np.ndarray:
    space = label_space(target)
    mapping = mapping_to_unified(target)
    n_unified = len(unified_space().ids)
    fallback = space.unlabelled_id if space.unlabelled_id is not None else -1
    out = np.full(n_unified, fallback, dtype=np.int64)
    best = np.full(n_unified, np.iinfo(np.int64).max, dtype=np.int64)
    counts = np.diff(mapping.offsets)
    for sid in space.ids:  # ascending: on equal counts the lower id stays
        lo, hi = mapping.offsets[sid], mapping.offsets[sid + 1]
        for u in mapping.targets[lo:hi]:
            if counts[sid] < best[u]:
                best[u] = counts[sid]
                out[u] = sid
    return _frozen(out)


def mapping_from_unified(target: str) -> np.ndarray:
    """For each unified class, the most specific class of ``target`` whose mapping includes it.

    Most specific = fewest unified targets, ties to the lowest id; classes no ``target`` class
    covers get the target's unlabelled id, or -1 where it has none. Simulates what a model of
    that space would predict for a surface of that unified class.
    """
    return _from_unified(_check_space(target)).copy()


def unified_to(target: str) -> np.ndarray:
    """Export ids per unified class: ScanNet200 raw ids, NYU40 or ScanNet20 ids; 0 = unknown."""
    if target == _UNIFIED:
        return np.arange(len(unified_space().ids), dtype=np.int64)
    _check_space(target, EXPORT_TARGETS)
    return _tables().exports[target].copy()


def class_prior() -> np.ndarray:
    """A rough frequency prior over unified classes, (n_unified,) float64 summing to 1; 0 for unknown.

    ScanNet numbered its raw categories by how often they were annotated (wall 1, chair 2,
    floor 3, ...), so 1 / raw id is a Zipf-like frequency estimate for the ScanNet200 classes;
    classes outside ScanNet200 get the rarest value. The consensus uses it to split the vote of
    a coarse source class (ADE20K "wall" = wall, shower wall, closet wall) by how likely each
    member is, instead of evenly.
    """
    raw = unified_to("scannet200").astype(np.float64)
    raw[raw == 0] = raw.max()
    prior = 1.0 / raw
    prior[UNKNOWN] = 0.0
    return prior / prior.sum()


def _fallback_palette(used: set[tuple[int, int, int]]):
    """Deterministic colours (golden-ratio hue sweep) not in ``used``."""
    k = 0
    rings = ((0.65, 0.90), (0.45, 0.80), (0.80, 0.70), (0.35, 0.95))
    while True:
        h = (k * 0.6180339887498949) % 1.0
        s, v = rings[(k // 7) % len(rings)]
        k += 1
        rgb = tuple(int(round(x * 255)) for x in colorsys.hsv_to_rgb(h, s, v))
        if rgb not in used:
            used.add(rgb)
            yield rgb


@functools.cache
def _palette(space_name: str) -> tuple[tuple[int, int, int], ...]:
    uni = unified_space()
    if space_name == _UNIFIED:
        return tuple(tuple(int(x) for x in c) for c in uni.colors)
    space = label_space(space_name)
    mapping = mapping_to_unified(space_name)
    used: set[tuple[int, int, int]] = {(0, 0, 0)}
    colors: list[tuple[int, int, int] | None] = []
    for sid in space.ids:  # a class takes the colour of its first unified target if still free
        t = mapping.targets_of(int(sid))
        rgb = tuple(int(x) for x in uni.colors[t[0]]) if len(t) else None
        if rgb is not None and rgb not in used:
            used.add(rgb)
            colors.append(rgb)
        else:
            colors.append(None)
    fresh = _fallback_palette(used)
    return tuple(c if c is not None else next(fresh) for c in colors)


def classes_json(space: str = "unified") -> list[dict]:
    """``[{"id", "name", "color": [r, g, b]}]`` for the classes of ``space``."""
    ls = label_space(space)
    return [{"id": int(i), "name": n, "color": list(c)}
            for i, n, c in zip(ls.ids, ls.names, _palette(space))]


def space_source(name: str) -> str:
    """Where the class list of ``name`` comes from (the ``source`` column of spaces.csv)."""
    return _tables().sources[_check_space(name)]
