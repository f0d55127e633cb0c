import json
import math

import numpy as np
import pytest

from labelmaker.evaluate import (Scores, confusion_matrix, plot_confusion, plot_per_class_iou, scores,
                                 write_scores_json)


def test_confusion_counts_rows_gt_cols_pred():
    gt = np.array([1, 1, 1, 2, 2, 3])
    pred = np.array([1, 1, 2, 2, 2, 1])
    conf = confusion_matrix(pred, gt, n_classes=4)
    assert conf.dtype == np.int64 and conf.shape == (4, 4)
    expected = np.zeros((4, 4), np.int64)
    expected[1, 1], expected[1, 2], expected[2, 2], expected[3, 1] = 2, 1, 2, 1
    np.testing.assert_array_equal(conf, expected)


def test_known_iou_accuracy_and_mean_over_gt_classes():
    # class 1: tp 2, fn 1 (->2), fp 1 (gt 3 -> 1): IoU 2/4
    # class 2: tp 2, fp 1 (from gt 1): IoU 2/3
    # class 3: tp 0, fn 1: IoU 0
    gt = np.array([1, 1, 1, 2, 2, 3])
    pred = np.array([1, 1, 2, 2, 2, 1])
    s = scores(confusion_matrix(pred, gt, 4))
    assert s.per_class_iou == pytest.approx({1: 0.5, 2: 2 / 3, 3: 0.0})
    assert s.miou == pytest.approx((0.5 + 2 / 3 + 0.0) / 3)
    assert s.accuracy == pytest.approx(4 / 6)
    assert s.n_evaluated == 6
    assert s.support == {1: 3, 2: 2, 3: 1}


def test_ignore_and_unknown_predictions():
    gt = np.array([0, 0, 1, 1, 2, 2])  # gt 0 = unlabelled: skipped
    pred = np.array([2, 1, 0, 1, 2, 2])  # pred 0 = unknown: wrong (fn of class 1)
    conf = confusion_matrix(pred, gt, 3)
    assert conf.sum() == 4 and conf[0].sum() == 0
    s = scores(conf)
    assert 0 not in s.per_class_iou  # ignored ids are never scored
    assert s.per_class_iou == pytest.approx({1: 0.5, 2: 1.0})
    assert s.miou == pytest.approx(0.75)
    assert s.accuracy == pytest.approx(3 / 4)
    assert s.n_evaluated == 4


def test_class_only_predicted_is_reported_but_not_averaged():
    gt = np.array([1, 1, 1, 1])
    pred = np.array([1, 1, 1, 5])  # 5 absent from gt: a false alarm
    s = scores(confusion_matrix(pred, gt, 8))
    assert s.per_class_iou == pytest.approx({1: 0.75, 5: 0.0})
    assert s.miou == pytest.approx(0.75)
    assert set(s.per_class_iou) == {1, 5}  # absent, unpredicted classes are left out


def test_classes_argument_restricts_scoring():
    gt = np.array([1, 2, 3, 3])
    pred = np.array([1, 1, 3, 3])
    s = scores(confusion_matrix(pred, gt, 4), classes=[1, 3])
    assert set(s.per_class_iou) == {1, 3}
    assert s.miou == pytest.approx((0.5 + 1.0) / 2)
    assert s.n_evaluated == 3 and s.accuracy == pytest.approx(1.0)


def test_2d_and_3d_shapes_agree():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 6, size=(3, 40, 50))
    pred = rng.integers(0, 6, size=(3, 40, 50))
    conf_img = confusion_matrix(pred, gt, 6)
    conf_flat = confusion_matrix(pred.reshape(-1), gt.reshape(-1), 6)
    np.testing.assert_array_equal(conf_img, conf_flat)
    # brute-force reference
    ref = np.zeros((6, 6), np.int64)
    for g, p in zip(gt.reshape(-1), pred.reshape(-1)):
        if g != 0:
            ref[g, p] += 1
    np.testing.assert_array_equal(conf_img, ref)


def test_out_of_range_and_bad_input_errors():
    with pytest.raises(ValueError, match="prediction"):
        confusion_matrix(np.array([1, 4]), np.array([1, 2]), 4)
    with pytest.raises(ValueError, match="prediction"):
        confusion_matrix(np.array([-1, 1]), np.array([0, 2]), 4)  # also where gt is ignored
    with pytest.raises(ValueError, match="ground truth"):
        confusion_matrix(np.array([1, 1]), np.array([1, 9]), 4)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros(3, int), np.zeros(4, int), 4)
    with pytest.raises(ValueError, match="integer"):
        confusion_matrix(np.zeros(3, float), np.zeros(3, int), 4)
    # an ignored gt value may lie outside the class range (e.g. 255 = void)
    conf = confusion_matrix(np.array([1, 2]), np.array([255, 2]), 4, ignore=(0, 255))
    assert conf.sum() == 1


def test_empty_evaluation_gives_nan_and_json_none(tmp_path):
    s = scores(confusion_matrix(np.array([1, 2]), np.array([0, 0]), 3))
    assert math.isnan(s.miou) and math.isnan(s.accuracy) and s.n_evaluated == 0
    data = s.to_json(["unlabeled", "a", "b"])
    assert data["miou"] is None and data["accuracy"] is None
    json.dumps(data)


def test_to_json_and_write_scores_json(tmp_path):
    gt = np.array([1, 1, 2, 2])
    pred = np.array([1, 2, 2, 2])
    s = scores(confusion_matrix(pred, gt, 3))
    names = ["unlabeled", "wall", "floor"]
    path = tmp_path / "eval" / "scores.json"
    write_scores_json({"ours": s, "copy": s}, names, path)
    data = json.loads(path.read_text())
    assert set(data["methods"]) == {"ours", "copy"}
    per = data["methods"]["ours"]["per_class"]
    assert [(e["id"], e["name"]) for e in per] == [(1, "wall"), (2, "floor")]
    assert per[0]["iou"] == pytest.approx(0.5)
    assert data["methods"]["ours"]["miou"] == pytest.approx(s.miou)
    assert sorted(p.name for p in path.parent.iterdir()) == ["scores.json"]  # no temporaries


def _is_png(path):
    return path.exists() and path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_write_pngs(tmp_path):
    rng = np.random.default_rng(1)
    n = 12
    gt = rng.integers(0, n, size=5000)
    noisy = np.where(rng.random(5000) < 0.7, gt, rng.integers(0, n, size=5000))
    names = [f"class{i}" for i in range(n)]
    conf = confusion_matrix(noisy, gt, n)
    by_method = {"noisy": scores(conf), "perfect": scores(confusion_matrix(gt, gt, n))}
    bars = tmp_path / "iou.png"
    heat = tmp_path / "confusion.png"
    plot_per_class_iou(by_method, names, bars, "per-class IoU")
    plot_confusion(conf, names, heat, "confusion", max_classes=5)
    assert _is_png(bars) and _is_png(heat)
    # an empty evaluation still gives a picture, not a crash
    empty = tmp_path / "empty.png"
    plot_per_class_iou({"none": Scores(float("nan"), float("nan"), {}, 0)}, names, empty, "empty")
    plot_confusion(np.zeros((n, n), np.int64), names, tmp_path / "empty_conf.png", "empty")
    assert empty.exists() and (tmp_path / "empty_conf.png").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
