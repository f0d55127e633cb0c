"""Label spaces and mapping tables (labelmaker/labels): table integrity, round trips, spot
checks against the public definitions, and the loader's error messages."""

import csv
import json
import re
import shutil
import time

import numpy as np
import pytest

from labelmaker import labels
from labelmaker.labels import (
    SPACES,
    UNKNOWN,
    LabelTableError,
    UnifiedSpace,
    classes_json,
    label_space,
    mapping_from_unified,
    mapping_to_unified,
    unified_space,
    unified_to,
)
from labelmaker.labels import spaces as spaces_mod

SOURCES = ("scannet200", "nyu40", "scannet20", "ade20k", "coco_panoptic")


def _csv_rows(space):
    meta = {r["name"]: r for r in csv.DictReader(open(spaces_mod.DATA_DIR / "spaces.csv"))}
    with open(spaces_mod.DATA_DIR / meta[space]["file"], newline="") as f:
        return list(csv.DictReader(f))


def _uid(name):
    return unified_space().id_of(name)


# ----------------------------------------------------------------------------- the spaces


def test_space_sizes():
    assert len(label_space("scannet200").ids) == 200
    assert len(label_space("nyu40").ids) == 40
    assert len(label_space("scannet20").ids) == 20
    assert len(label_space("ade20k").ids) == 150
    assert len(label_space("coco_panoptic").ids) == 133
    assert 185 <= len(unified_space().ids) <= 210


def test_space_ids_and_unlabelled():
    assert SPACES == ("unified", "scannet200", "nyu40", "scannet20", "ade20k", "coco_panoptic")
    u = unified_space()
    assert isinstance(u, UnifiedSpace)
    assert np.array_equal(u.ids, np.arange(len(u.ids)))
    assert u.unlabelled_id == UNKNOWN == 0 and u.name_of(UNKNOWN) == "unknown"
    assert u.max_id == len(u.ids) - 1
    assert np.array_equal(label_space("nyu40").ids, np.arange(1, 41))
    assert np.array_equal(label_space("ade20k").ids, np.arange(150))
    assert np.array_equal(label_space("coco_panoptic").ids, np.arange(133))
    for name in ("nyu40", "scannet200", "scannet20"):
        assert label_space(name).unlabelled_id == 0
        assert 0 not in label_space(name).ids
    # ADE20K's "other" (objectInfo150 Idx 0) is mmseg's ignore index 255 after reduce_zero_label
    ade = label_space("ade20k")
    assert ade.unlabelled_id == 255 and ade.max_id == 255 and ade.name_of(255) == "unlabelled"
    assert len(ade.invalid_ids(np.array([0, 149, 255]))) == 0
    assert ade.invalid_ids(np.array([150, 254])).tolist() == [150, 254]
    assert len(mapping_to_unified("ade20k").targets_of(255)) == 0  # it votes for nothing
    assert label_space("coco_panoptic").unlabelled_id is None
    s200 = label_space("scannet200")
    assert s200.max_id == int(s200.ids[-1]) and s200.ids[0] == 1
    # ScanNet20 uses NYU40 ids: a subset of NYU40
    s20, nyu = label_space("scannet20"), label_space("nyu40")
    assert set(s20.ids) <= set(nyu.ids)
    assert s20.max_id == 39


def test_every_id_has_exactly_one_row():
    for name in SPACES:
        space = label_space(name)
        rows = _csv_rows(name)
        ids = [int(r["id"]) for r in rows]
        assert len(ids) == len(set(ids)) == len(space.ids), name
        assert sorted(ids) == space.ids.tolist(), name
        assert all(0 <= i <= space.max_id for i in ids), name
        if name != "unified":
            assert all("unified" in r and r["unified"] is not None for r in rows), name


def test_ids_sorted_names_unique_and_readonly():
    for name in SPACES:
        space = label_space(name)
        assert space.ids.dtype == np.int64
        assert np.all(np.diff(space.ids) > 0)
        assert len(space.names) == len(space.ids)
        assert len({n.lower() for n in space.names}) == len(space.names), name
        assert all(n == n.strip() and n for n in space.names)
        with pytest.raises(ValueError):
            space.ids[0] = 5
    u = unified_space()
    assert all(n == n.lower() for n in u.names)
    assert len(set(u.wordnet)) == len(u.wordnet) == len(u.ids)
    assert all(re.fullmatch(r"[a-z0-9][a-z0-9_.'/-]*\.n\.\d\d", s) for s in u.wordnet)
    assert u.colors.shape == (len(u.ids), 3) and u.colors.dtype == np.uint8
    assert u.wordnet[u.id_of("chair")] == "chair.n.01"
    assert u.wordnet[u.id_of("couch")] == "sofa.n.01"


def test_spot_checks_against_public_definitions():
    ade = label_space("ade20k")
    for cid, name in [(0, "wall"), (1, "building"), (2, "sky"), (3, "floor"), (4, "tree"),
                      (5, "ceiling"), (7, "bed"), (8, "windowpane"), (14, "door"), (15, "table"),
                      (19, "chair"), (23, "sofa"), (36, "lamp"), (62, "bookcase"),
                      (89, "television receiver"), (149, "flag")]:
        assert ade.name_of(cid) == name
    s200 = label_space("scannet200")
    for cid, name in [(1, "wall"), (2, "chair"), (3, "floor"), (4, "table"), (5, "door"),
                      (6, "couch"), (7, "cabinet"), (8, "shelf"), (9, "desk"),
                      (10, "office chair"), (11, "bed"), (13, "pillow"), (41, "ceiling"),
                      (1191, "mattress")]:
        assert s200.name_of(cid) == name
    assert 12 not in s200.ids and 20 not in s200.ids
    coco = label_space("coco_panoptic")
    for cid, name in [(0, "person"), (56, "chair"), (57, "couch"), (62, "tv"), (79, "toothbrush"),
                      (80, "banner"), (132, "rug-merged")]:
        assert coco.name_of(cid) == name
    nyu = label_space("nyu40")
    for cid, name in [(1, "wall"), (2, "floor"), (6, "sofa"), (24, "refridgerator"),
                      (32, "night stand"), (38, "otherstructure"), (39, "otherfurniture"),
                      (40, "otherprop")]:
        assert nyu.name_of(cid) == name
    s20 = label_space("scannet20")
    assert s20.ids.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39]
    assert s20.name_of(24) == "refrigerator" and s20.name_of(39) == "otherfurniture"


def test_name_and_id_lookups():
    ade = label_space("ade20k")
    assert ade.id_of("Chair ") == 19
    assert label_space("nyu40").name_of(0) == "unlabelled"
    assert label_space("nyu40").id_of("unlabelled") == 0
    with pytest.raises(KeyError, match="chair"):
        ade.id_of("chiar")
    with pytest.raises(KeyError, match="ade20k"):
        ade.name_of(150)
    with pytest.raises(KeyError):
        label_space("coco_panoptic").name_of(-1)
    with pytest.raises(ValueError, match="coco_panoptic"):
        label_space("cityscapes")
    with pytest.raises(ValueError, match="nyu40"):
        unified_to("ade20k")
    with pytest.raises(ValueError):
        mapping_to_unified("scannet")


def test_invalid_ids():
    nyu = label_space("nyu40")
    assert nyu.invalid_ids(np.array([0, 1, 40, 41, -1, 41, 7])).tolist() == [-1, 41]
    assert nyu.invalid_ids(np.zeros((4, 5), np.uint8)).size == 0
    assert nyu.invalid_ids(np.array([], np.int32)).size == 0
    ade = label_space("ade20k")
    assert ade.invalid_ids(np.array([0, 149, 150, 254, 255, 256])).tolist() == [150, 254, 256]  # 255: unlabelled
    s200 = label_space("scannet200")
    assert s200.invalid_ids(np.array([0, 1, 12, 41, 1191, 1192])).tolist() == [12, 1192]
    u = unified_space()
    assert u.invalid_ids(np.array([0, u.max_id, u.max_id + 1])).tolist() == [u.max_id + 1]
    assert nyu.invalid_ids(np.array([1.0, 2.5, 41.0])).tolist() == [2.5, 41.0]


def test_only_valid_ids_agrees_with_invalid_ids():
    """The stage's whole-shard check (one bincount) must pass exactly the stacks invalid_ids passes."""
    rng = np.random.default_rng(0)
    for space in (label_space("nyu40"), label_space("ade20k"), label_space("scannet200"), unified_space()):
        valid = np.setdiff1d(np.arange(space.max_id + 1), space.invalid_ids(np.arange(space.max_id + 1)))
        clean = rng.choice(valid, (3, 8, 8)).astype(np.uint16)
        assert space.only_valid_ids(clean) and space.invalid_ids(clean).size == 0
        for bad in (space.max_id + 1, *space.invalid_ids(np.arange(space.max_id + 1))[:3]):
            dirty = clean.copy()
            dirty[2, 5, 1] = bad
            assert not space.only_valid_ids(dirty) and space.invalid_ids(dirty).tolist() == [bad]
    assert not label_space("nyu40").only_valid_ids(np.array([1, -1]))  # negative
    assert not label_space("nyu40").only_valid_ids(np.array([1.0]))  # not integers: the slow check decides
    assert label_space("nyu40").only_valid_ids(np.zeros((0, 4), np.uint8))


# ----------------------------------------------------------------------------- mappings


def test_mapping_structure():
    n_unified = len(unified_space().ids)
    for name in SPACES:
        space, m = label_space(name), mapping_to_unified(name)
        assert m.source == name
        assert m.offsets.shape == (space.max_id + 2,) and m.offsets.dtype == np.int64
        assert m.offsets[0] == 0 and np.all(np.diff(m.offsets) >= 0)
        assert m.offsets[-1] == len(m.targets) and m.targets.dtype == np.int64
        assert np.all((m.targets > 0) & (m.targets < n_unified))
        valid = set(space.ids.tolist())
        for sid in range(space.max_id + 1):
            t = m.targets_of(sid)
            if sid not in valid or (name == "unified" and sid == UNKNOWN):
                assert t.size == 0, (name, sid)
            assert len(set(t.tolist())) == t.size
        with pytest.raises(KeyError):
            m.targets_of(space.max_id + 1)
    ident = mapping_to_unified("unified")
    assert ident.targets_of(0).size == 0
    assert all(ident.targets_of(i).tolist() == [i] for i in range(1, n_unified))


def test_every_unified_class_is_reachable():
    covered = set()
    for name in SOURCES:
        covered |= set(mapping_to_unified(name).targets.tolist())
    assert covered == set(range(1, len(unified_space().ids)))


def test_outdoor_classes_vote_for_nothing():
    for space, names in [("ade20k", ["sky", "tree", "car", "mountain", "road", "airplane"]),
                         ("coco_panoptic", ["car", "giraffe", "sky-other-merged", "snowboard"])]:
        ls, m = label_space(space), mapping_to_unified(space)
        for n in names:
            assert m.targets_of(ls.id_of(n)).size == 0, (space, n)
    rows = {r["name"]: r for r in _csv_rows("ade20k")}
    assert rows["sky"]["unified"] == ""  # explicit empty cell


def test_scannet200_round_trip_all_200():
    s200, m = label_space("scannet200"), mapping_to_unified("scannet200")
    export = unified_to("scannet200")
    seen = set()
    for sid, sname in zip(s200.ids, s200.names):
        t = m.targets_of(int(sid))
        assert t.size == 1, sname
        assert int(export[t[0]]) == sid, sname
        seen.add(int(t[0]))
    assert len(seen) == 200
    nonzero = export[export > 0]
    assert len(set(nonzero.tolist())) == nonzero.size == 200  # injective
    assert export[UNKNOWN] == 0
    for u in np.flatnonzero(export == 0):
        assert u == UNKNOWN or u not in seen
    assert set(s200.invalid_ids(export).tolist()) == set()


def test_nyu40_round_trip_and_consistency():
    nyu, m = label_space("nyu40"), mapping_to_unified("nyu40")
    export = unified_to("nyu40")
    assert nyu.invalid_ids(export).size == 0
    n_single = 0
    for sid in nyu.ids:
        t = m.targets_of(int(sid))
        if t.size == 1:
            n_single += 1
            assert int(export[t[0]]) == sid, nyu.name_of(sid)
    assert n_single >= 15
    # every unified class exported as NYU40 n is among the classes NYU40 n stands for
    for u in range(1, len(export)):
        assert export[u] > 0, unified_space().name_of(u)
        assert u in m.targets_of(int(export[u])), unified_space().name_of(u)


def test_scannet20_via_nyu40():
    s20, m20, m40 = label_space("scannet20"), mapping_to_unified("scannet20"), mapping_to_unified("nyu40")
    nyu_export, export = unified_to("nyu40"), unified_to("scannet20")
    expected = np.where(np.isin(nyu_export, s20.ids), nyu_export, 0)
    assert np.array_equal(export, expected)
    for sid in s20.ids:
        assert np.array_equal(m20.targets_of(int(sid)), m40.targets_of(int(sid)))
        t = m20.targets_of(int(sid))
        if t.size == 1:
            assert int(export[t[0]]) == sid
    assert export[_uid("chair")] == 5 and export[_uid("lamp")] == 0
    assert export[_uid("tv stand")] == 39  # otherfurniture


def test_exports_of_common_classes():
    nyu, s200 = unified_to("nyu40"), unified_to("scannet200")
    assert s200[_uid("ceiling")] == 41
    assert nyu[_uid("couch")] == 6 and nyu[_uid("nightstand")] == 32
    assert nyu[_uid("refrigerator")] == 24 and nyu[_uid("rug")] == 40
    assert s200[_uid("rug")] == 0  # not a ScanNet200 class
    assert np.array_equal(unified_to("unified"), np.arange(len(unified_space().ids)))
    a = unified_to("nyu40")
    a[:] = -7  # a copy: the cached table is untouched
    assert unified_to("nyu40")[_uid("wall")] == 1


EXPECTED_FROM_UNIFIED = {
    "ade20k": {"wall": "wall", "floor": "floor", "ceiling": "ceiling", "chair": "chair",
               "table": "table", "bed": "bed", "door": "door", "window": "windowpane",
               "couch": "sofa", "cabinet": "cabinet", "lamp": "lamp", "pillow": "pillow",
               "tv": "television receiver", "bookshelf": "bookcase", "picture": "painting",
               "curtain": "curtain", "toilet": "toilet", "sink": "sink",
               "office chair": "swivel chair", "nightstand": "chest of drawers", "rug": "rug",
               "shower wall": "wall", "remote control": "unlabelled"},
    "coco_panoptic": {"chair": "chair", "couch": "couch", "bed": "bed", "tv": "tv",
                      "toilet": "toilet", "sink": "sink", "refrigerator": "refrigerator",
                      "book": "book", "ceiling": "ceiling-merged", "curtain": "curtain",
                      "potted plant": "potted plant", "rug": "rug-merged", "laptop": "laptop",
                      "dining table": "dining table", "stairs": "stairs", "whiteboard": None},
    "nyu40": {"wall": "wall", "floor": "floor", "ceiling": "ceiling", "chair": "chair",
              "table": "table", "couch": "sofa", "bed": "bed", "tv": "television",
              "nightstand": "night stand", "refrigerator": "refridgerator", "lamp": "lamp",
              "bookshelf": "bookshelf", "shelf": "shelves", "office chair": "chair",
              "monitor": "otherprop", "rug": "floor mat"},
    "scannet20": {"wall": "wall", "floor": "floor", "chair": "chair", "table": "table",
                  "couch": "sofa", "bed": "bed", "door": "door", "window": "window",
                  "refrigerator": "refrigerator", "toilet": "toilet", "trash can": "otherfurniture",
                  "ceiling": "unlabelled", "lamp": "unlabelled"},
    "scannet200": {"wall": "wall", "ceiling": "ceiling", "office chair": "office chair",
                   "mattress": "mattress", "vase": "unlabelled"},
}


@pytest.mark.parametrize("space", sorted(EXPECTED_FROM_UNIFIED))
def test_mapping_from_unified_is_sane(space):
    ls, f = label_space(space), mapping_from_unified(space)
    assert f.shape == (len(unified_space().ids),) and f.dtype == np.int64
    for uname, sname in EXPECTED_FROM_UNIFIED[space].items():
        sid = int(f[_uid(uname)])
        if sname is None:
            assert sid == -1, (uname, ls.name_of(sid))
        else:
            assert sid >= 0 and ls.name_of(sid) == sname, (uname, sid)
    fallback = ls.unlabelled_id if ls.unlabelled_id is not None else -1
    assert f[UNKNOWN] == fallback
    # the chosen class covers the unified class and no covering class is more specific
    m = mapping_to_unified(space)
    counts = np.diff(m.offsets)
    for u in range(1, len(f)):
        covering = [int(s) for s in ls.ids if u in m.targets_of(int(s))]
        if not covering:
            assert f[u] == fallback
            continue
        best = min(covering, key=lambda s: (counts[s], s))
        assert f[u] == best


def test_mapping_from_unified_identity_for_scannet200_and_unified():
    f = mapping_from_unified("scannet200")
    export = unified_to("scannet200")
    assert np.array_equal(f, export)
    assert np.array_equal(mapping_from_unified("unified"), np.arange(len(unified_space().ids)))


# ----------------------------------------------------------------------------- json, colours


@pytest.mark.parametrize("space", SPACES)
def test_classes_json_round_trip(space):
    entries = json.loads(json.dumps(classes_json(space)))
    ls = label_space(space)
    assert [e["id"] for e in entries] == ls.ids.tolist()
    assert [e["name"] for e in entries] == list(ls.names)
    for e in entries:
        assert ls.id_of(e["name"]) == e["id"] and ls.name_of(e["id"]) == e["name"]
        assert len(e["color"]) == 3 and all(0 <= c <= 255 for c in e["color"])
    colors = [tuple(e["color"]) for e in entries]
    assert len(set(colors)) == len(colors)
    assert classes_json(space) == entries  # deterministic


def test_unified_colours_distinct_and_readable():
    u = unified_space()
    assert classes_json()[0] == {"id": 0, "name": "unknown", "color": [0, 0, 0]}
    c = u.colors[1:].astype(float)
    d = np.linalg.norm(c[:, None] - c[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    assert d.min() >= 15  # no two classes nearly the same colour
    assert np.all(c.max(axis=1) >= 60)  # none near-black (black is unknown)
    assert [e["color"] for e in classes_json("unified")] == u.colors.tolist()
    # a ScanNet200 class gets the colour of its unified class
    s200 = classes_json("scannet200")
    assert s200[0]["color"] == u.colors[u.id_of("wall")].tolist()


# ----------------------------------------------------------------------------- loader errors


@pytest.fixture
def data_copy(tmp_path):
    dst = tmp_path / "data"
    shutil.copytree(spaces_mod.DATA_DIR, dst)
    return dst


def _edit(path, old, new):
    text = path.read_text()
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new))


def _line_of(path, needle):
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError(needle)


def test_loader_accepts_the_package_tables(data_copy):
    tables = spaces_mod.load_tables(data_copy)
    assert tables.spaces["ade20k"].names == label_space("ade20k").names


def test_typo_in_mapping_names_file_and_row(data_copy):
    path = data_copy / "ade20k.csv"
    _edit(path, "armchair; sofa chair", "armchair; sofa chiar")
    line = _line_of(path, "sofa chiar")
    with pytest.raises(LabelTableError) as err:
        spaces_mod.load_tables(data_copy)
    msg = str(err.value)
    assert f"ade20k.csv:{line}:" in msg
    assert "'sofa chiar'" in msg and "did you mean 'sofa chair'" in msg


def _set_cell(path, row_id, column, value):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    col = rows[0].index(column)
    hits = [r for r in rows[1:] if r[0] == str(row_id)]
    assert len(hits) == 1
    hits[0][col] = value
    with open(path, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)


@pytest.mark.parametrize("file,row_id,column,value,expect", [
    ("coco_panoptic.csv", 56, "unified", "unknown; chair", "cannot be a target"),
    ("coco_panoptic.csv", 56, "unified", "chair;; couch", "empty name"),
    ("nyu40.csv", 6, "unified", "couch; couch", "listed twice"),
    ("nyu40.csv", 6, "id", "5", "id 5 repeats"),
    ("nyu40.csv", 6, "id", "six", "not an integer"),
    ("nyu40.csv", 6, "id", "0", "unlabelled id"),
    ("ade20k.csv", 23, "name", "chair", "name 'chair' repeats"),
    ("unified.csv", 2, "wordnet", "sofa.n.01", "synset 'sofa.n.01' repeats"),
    ("unified.csv", 2, "name", "Chair", "lower-case"),
    ("unified.csv", 2, "wordnet", "chair", "WordNet noun synset"),
    ("unified.csv", 2, "r", "300", "outside 0..255"),
    ("unified.csv", 36, "scannet200", "12", "12 is no class id of 'scannet200'"),
    ("unified.csv", 36, "nyu40", "41", "41 is no class id of 'nyu40'"),
])
def test_loader_errors(data_copy, file, row_id, column, value, expect):
    path = data_copy / file
    _set_cell(path, row_id, column, value)
    with pytest.raises(LabelTableError, match=re.escape(expect)) as err:
        spaces_mod.load_tables(data_copy)
    assert f"{file}:" in str(err.value)


def test_duplicate_colour_is_an_error(data_copy):
    path = data_copy / "unified.csv"
    rows = {r["id"]: r for r in csv.DictReader(open(path))}
    for c in "rgb":
        _set_cell(path, 3, c, rows["2"][c])
    with pytest.raises(LabelTableError, match="colour .* repeats"):
        spaces_mod.load_tables(data_copy)


def test_missing_row_is_an_error_for_unified(data_copy):
    path = data_copy / "unified.csv"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:5] + lines[6:]))  # drop id 4
    with pytest.raises(LabelTableError, match="without gaps"):
        spaces_mod.load_tables(data_copy)


def test_loading_is_fast_and_cached(data_copy):
    t0 = time.perf_counter()
    spaces_mod.load_tables(data_copy)
    assert time.perf_counter() - t0 < 2.0
    assert label_space("ade20k") is label_space("ade20k")
    assert mapping_to_unified("nyu40") is mapping_to_unified("nyu40")


# ----------------------------------------------------------------------------- other modules


def test_synthetic_scene_classes_are_unified_classes():
    from labelmaker.synthetic import CLASS_NAMES

    u = unified_space()
    assert CLASS_NAMES[0] == "unlabeled"
    for name in CLASS_NAMES[1:]:
        assert u.name_of(u.id_of(name)) == name


def test_public_api():
    for name in ["UNKNOWN", "SPACES", "LabelSpace", "UnifiedSpace", "LabelMapping", "label_space",
                 "unified_space", "mapping_to_unified", "mapping_from_unified", "unified_to",
                 "classes_json"]:
        assert hasattr(labels, name), name
