"""Per-pixel consensus voting (labelmaker.consensus)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from labelmaker.consensus import ConsensusConfig, vote

N_CLASSES = 10


@dataclass
class Mapping:
    """Stand-in for a label mapping: CSR rows of unified ids per source id."""

    offsets: np.ndarray
    targets: np.ndarray

    @classmethod
    def from_rows(cls, rows: list[list[int]]) -> "Mapping":
        offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
        targets = np.array([t for r in rows for t in r], dtype=np.int64)
        return cls(offsets, targets)


def identity(n: int = N_CLASSES) -> Mapping:
    """Source id s -> unified id s; source 0 votes for nothing."""
    return Mapping.from_rows([[]] + [[i] for i in range(1, n)])


def full(value: int, shape=(4, 5)) -> np.ndarray:
    return np.full(shape, value, dtype=np.int64)


def run(preds, maps, weights, **cfg):
    prior = cfg.pop("prior", None)
    cfg.setdefault("split", "share")
    labels, conf = vote(preds, maps, weights, N_CLASSES, ConsensusConfig(device="cpu", **cfg), prior=prior)
    return labels.numpy(), conf.numpy()


def dense_reference(preds, maps, weights, n_classes, split):
    """Straightforward per-pixel loop to compare against."""
    shape = np.asarray(preds[0]).shape
    flat = [np.asarray(p).reshape(-1) for p in preds]
    labels = np.zeros(flat[0].size, np.int64)
    conf = np.zeros(flat[0].size, np.float32)
    for px in range(flat[0].size):
        votes = np.zeros(n_classes)
        total = 0.0
        for p, m, w in zip(flat, maps, weights):
            row = m.targets[m.offsets[p[px]]:m.offsets[p[px] + 1]]
            if len(row) == 0:
                continue
            total += w
            for t in row:
                votes[t] += w / len(row) if split == "share" else w
        if total > 0 and votes.max() > 0:
            best = votes.max()
            labels[px] = int(np.flatnonzero(votes >= best - 1e-5 * total)[0])
            conf[px] = best / total
    return labels.reshape(shape), conf.reshape(shape)


def test_agreement_gives_the_shared_label_with_full_confidence():
    labels, conf = run([full(3), full(3), full(3)], [identity()] * 3, [1.0, 1.0, 0.5])
    assert (labels == 3).all() and np.allclose(conf, 1.0)


def test_weighted_override():
    a, b = full(2), full(5)
    labels, conf = run([a, b], [identity()] * 2, [1.0, 2.0])
    assert (labels == 5).all() and np.allclose(conf, 2 / 3)
    labels, _ = run([a, b, b], [identity()] * 3, [3.0, 1.0, 1.0])
    assert (labels == 2).all()


def test_split_share_versus_each():
    # source 1 of model A stands for {4, 5}; model B says 4 with weight 0.8
    multi = Mapping.from_rows([[], [4, 5]])
    a, b = full(1), full(4)
    # share: 4 gets 0.5 + 0.8, 5 gets 0.5 -> 4, share 1.3 / 1.8
    labels, conf = run([a, b], [multi, identity()], [1.0, 0.8], split="share")
    assert (labels == 4).all() and np.allclose(conf, 1.3 / 1.8)
    # A alone, share: 4 and 5 tie at 0.5 -> lowest id, confidence 0.5
    labels, conf = run([a], [multi], [1.0], split="share")
    assert (labels == 4).all() and np.allclose(conf, 0.5)
    # each: 5 gets the full weight 1.0; B weighs 0.8 for 4 -> 4 gets 1.8, 5 gets 1.0
    labels, conf = run([a, b], [multi, identity()], [1.0, 0.8], split="each")
    assert (labels == 4).all() and np.allclose(conf, 1.0)
    # a different model for 5 with weight 0.9: share: 4 = 0.5, 5 = 0.5 + 0.9 -> 5; each: 4 = 1, 5 = 1.9 -> 5
    labels, _ = run([a, full(5)], [multi, identity()], [1.0, 0.9], split="share")
    assert (labels == 5).all()
    # weights where the two rules disagree: A {4,5} w=1, B 6 w=0.7:
    # share: 4=0.5, 5=0.5, 6=0.7 -> 6; each: 4=1, 5=1, 6=0.7 -> 4
    labels, _ = run([a, full(6)], [multi, identity()], [1.0, 0.7], split="share")
    assert (labels == 6).all()
    labels, _ = run([a, full(6)], [multi, identity()], [1.0, 0.7], split="each")
    assert (labels == 4).all()


def test_empty_row_casts_no_vote():
    labels, conf = run([full(0), full(7)], [identity()] * 2, [5.0, 1.0])
    assert (labels == 7).all() and np.allclose(conf, 1.0)
    labels, conf = run([full(0)], [identity()], [1.0])
    assert (labels == 0).all() and (conf == 0).all()


def test_unknown_by_min_support_margin_votes():
    preds = [full(2), full(3), full(2)]
    maps = [identity()] * 3
    w = [1.0, 1.0, 0.5]  # 2: 1.5, 3: 1.0 -> support 0.6, margin 0.2, total 2.5
    labels, conf = run(preds, maps, w)
    assert (labels == 2).all() and np.allclose(conf, 0.6)
    assert (run(preds, maps, w, min_support=0.59)[0] == 2).all()
    labels, conf = run(preds, maps, w, min_support=0.61)
    assert (labels == 0).all() and (conf == 0).all()
    assert (run(preds, maps, w, min_margin=0.19)[0] == 2).all()
    assert (run(preds, maps, w, min_margin=0.21)[0] == 0).all()
    assert (run(preds, maps, w, min_votes=2.5)[0] == 2).all()
    assert (run(preds, maps, w, min_votes=2.6)[0] == 0).all()


def test_tie_rule_lowest_id_and_margin_turns_ties_unknown():
    # 7 and 3 tie at weight 1 (with float sums that differ only by rounding): lowest id wins
    preds = [full(7), full(3), full(3), full(7)]
    labels, conf = run(preds, [identity()] * 4, [0.1 + 0.2, 0.3, 0.0, 0.0])
    assert (labels == 3).all() and np.allclose(conf, 0.5)
    labels, _ = run([full(7), full(3)], [identity()] * 2, [1.0, 1.0])
    assert (labels == 3).all()
    labels, _ = run([full(7), full(3)], [identity()] * 2, [1.0, 1.0], min_margin=1e-3)
    assert (labels == 0).all()


def test_batch_equals_per_frame_and_reference():
    rng = np.random.default_rng(0)
    maps = [Mapping.from_rows([[]] + [list(rng.choice(np.arange(1, N_CLASSES), rng.integers(0, 4), replace=False))
                                      for _ in range(size - 1)]) for size in (12, 9, 15)]
    batch = [rng.integers(0, size, (3, 6, 7)) for size in (12, 9, 15)]
    weights = [1.0, 0.7, 0.4]
    for split in ("share", "each"):
        labels, conf = run(batch, maps, weights, split=split)
        assert labels.shape == (3, 6, 7) and labels.dtype == np.int64 and conf.dtype == np.float32
        for i in range(3):
            li, ci = run([b[i] for b in batch], maps, weights, split=split)
            np.testing.assert_array_equal(li, labels[i])
            np.testing.assert_allclose(ci, conf[i], rtol=1e-6)
        ref_l, ref_c = dense_reference(batch, maps, weights, N_CLASSES, split)
        np.testing.assert_array_equal(labels, ref_l)
        np.testing.assert_allclose(conf, ref_c, rtol=1e-5)


def test_accepts_numpy_and_torch_of_any_integer_dtype():
    a = full(4).astype(np.uint8)
    b = torch.full((4, 5), 4, dtype=torch.int32)
    c = full(4).astype(np.uint16)
    labels, conf = vote([a, b, c], [identity()] * 3, [1, 1, 1], N_CLASSES, ConsensusConfig(device="cpu", split="share"))
    assert isinstance(labels, torch.Tensor) and (labels == 4).all()


def test_out_of_range_source_id_names_id_and_prediction():
    bad = full(2)
    bad[1, 1] = 12
    with pytest.raises(ValueError, match=r"prediction 1: source label id 12"):
        run([full(1), bad], [identity()] * 2, [1.0, 1.0])
    bad[1, 1] = -3
    with pytest.raises(ValueError, match=r"prediction 1: source label id -3"):
        run([full(1), bad], [identity()] * 2, [1.0, 1.0])


def test_bad_arguments():
    with pytest.raises(ValueError, match="one mapping and one weight"):
        run([full(1), full(1)], [identity()], [1.0, 1.0])
    with pytest.raises(ValueError, match="shape"):
        run([full(1), full(1, (2, 2))], [identity()] * 2, [1.0, 1.0])
    with pytest.raises(ValueError, match="weights"):
        run([full(1)], [identity()], [-1.0])
    with pytest.raises(ValueError, match="target"):
        run([full(1)], [Mapping.from_rows([[], [N_CLASSES]])], [1.0])
    with pytest.raises(ValueError, match="split"):
        run([full(1)], [identity()], [1.0], split="majority")


def test_many_predictions_repack_the_key():
    """Six predictions with 2**15 source ids each: the packed key would need 90 bits."""
    rng = np.random.default_rng(1)
    size = 1 << 15
    rows = [[]] + [[int(x)] for x in rng.integers(1, N_CLASSES, size - 1)]
    mapping = Mapping.from_rows(rows)
    preds = [rng.integers(0, size, (2, 20, 30)) for _ in range(6)]
    preds[3][:, :10] = preds[0][:, :10]  # some repeated tuples too
    weights = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5]
    labels, conf = run(preds, [mapping] * 6, weights)
    ref_l, ref_c = dense_reference(preds, [mapping] * 6, weights, N_CLASSES, "share")
    np.testing.assert_array_equal(labels, ref_l)
    np.testing.assert_allclose(conf, ref_c, rtol=1e-5)
    # ... and a long list of small spaces (flip-TTA style duplicates)
    small = [rng.integers(0, N_CLASSES, (5, 6)) for _ in range(40)]
    labels, conf = run(small, [identity()] * 40, [1.0] * 40)
    ref_l, ref_c = dense_reference(small, [identity()] * 40, [1.0] * 40, N_CLASSES, "share")
    np.testing.assert_array_equal(labels, ref_l)
    np.testing.assert_allclose(conf, ref_c, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    rng = np.random.default_rng(2)
    maps = [identity(), Mapping.from_rows([[], [1, 2], [3], [4, 5, 6]])]
    preds = [rng.integers(0, N_CLASSES, (2, 30, 40)), rng.integers(0, 4, (2, 30, 40))]
    cpu = vote(preds, maps, [1.0, 0.8], N_CLASSES, ConsensusConfig(device="cpu", split="share"))
    gpu = vote(preds, maps, [1.0, 0.8], N_CLASSES, ConsensusConfig(device="cuda", split="share"))
    assert gpu[0].is_cuda
    np.testing.assert_array_equal(cpu[0].numpy(), gpu[0].cpu().numpy())
    np.testing.assert_allclose(cpu[1].numpy(), gpu[1].cpu().numpy(), rtol=1e-6)


def test_split_by_prior_favours_the_frequent_member():
    """A coarse class (1 -> {1, 2, 3}) against one confident specific vote for 5."""
    coarse = Mapping.from_rows([[], [1, 2, 3]] + [[i] for i in range(2, N_CLASSES)])
    prior = np.zeros(N_CLASSES)
    prior[1:] = 0.01
    prior[1] = 0.9
    a, b = full(1), full(1)
    c = full(5)
    # Evenly shared, class 1 gets 2/3 < 1 from the single vote for 5; by prior it gets 2.
    labels, _ = run([a, b, c], [coarse, coarse, identity()], [1, 1, 1], split="share")
    assert (labels == 5).all()
    labels, conf = run([a, b, c], [coarse, coarse, identity()], [1, 1, 1], split="prior", prior=prior)
    assert (labels == 1).all()
    assert np.allclose(conf, 2 / 3, atol=1e-5)
    # One coarse vote against one specific vote for a rarer class: a tie, which the lower id wins.
    labels, _ = run([a, c], [coarse, identity()], [1, 1], split="prior", prior=prior)
    assert (labels == 1).all()
    with pytest.raises(ValueError, match="prior"):
        run([a], [coarse], [1], split="prior")


# -- calibrated voting ------------------------------------------------------------------------------

from labelmaker.consensus import calibrate, class_counts, vote_calibrated  # noqa: E402


def test_class_counts_count_winners_per_source_class():
    # pixel 0: both say 1; pixel 1: 1 against 2 (a tie: 1 wins by the tie rule); pixel 2: nothing maps
    preds = [np.array([[1, 1, 0]]), np.array([[1, 2, 0]])]
    counts, wins = class_counts(
        preds, [identity()] * 2, [1.0, 1.0], N_CLASSES, ConsensusConfig(device="cpu", split="share")
    )
    assert counts[0].shape == (N_CLASSES, N_CLASSES)
    assert counts[0][1, 1] == 2 and counts[0].sum() == 2
    assert counts[1][1, 1] == 1 and counts[1][2, 1] == 1 and counts[1].sum() == 2
    assert wins.tolist() == [0, 2] + [0] * (N_CLASSES - 2)  # the unmapped pixel counts nowhere


def test_calibration_without_counts_keeps_the_mappings_meaning():
    counts = [np.zeros((N_CLASSES, N_CLASSES))]
    wins = np.zeros(N_CLASSES, np.int64)
    wins[[0, 1, 2, 3]] = 5  # id 0 (unknown) is never a class
    cal = calibrate(counts, wins, [identity()], N_CLASSES, ConsensusConfig(device="cpu", split="share"))
    assert cal.classes.tolist() == [1, 2, 3]
    table = cal.log_likelihood[0]
    assert table.shape == (N_CLASSES, 3)
    assert [int(np.argmax(table[s])) for s in (1, 2, 3)] == [0, 1, 2]  # source s is most likely under class s
    np.testing.assert_allclose(np.exp(table).sum(0), 1.0, rtol=1e-5)  # a distribution over sources per class


def test_calibrated_vote_undoes_a_systematic_confusion():
    """Model A calls every 3 a 1; B and C are right 70 % of the time and otherwise random. The
    calibrated vote learns that A's 1 is weaker evidence for 1 than the others' 1."""
    rng = np.random.default_rng(0)
    truth = rng.choice([1, 2, 3, 4], size=(20, 30, 40), p=[0.4, 0.3, 0.2, 0.1])
    a = np.where(truth == 3, 1, truth)

    def noisy():
        wrong = rng.random(truth.shape) < 0.3
        return np.where(wrong, rng.integers(1, 5, size=truth.shape), truth)

    preds, maps, weights = [a, noisy(), noisy()], [identity()] * 3, [1.0] * 3
    cfg = ConsensusConfig(device="cpu", split="share")
    plain, _ = vote(preds, maps, weights, N_CLASSES, cfg)
    cal = calibrate(*class_counts(preds, maps, weights, N_CLASSES, cfg), maps, N_CLASSES, cfg)
    calibrated, share = vote_calibrated(preds, maps, weights, N_CLASSES, cal, cfg)
    acc_plain = (plain.numpy() == truth).mean()
    acc_cal = (calibrated.numpy() == truth).mean()
    assert acc_cal > acc_plain + 0.008, (acc_plain, acc_cal)
    assert ((share >= 0) & (share <= 1)).all()


def test_calibrated_vote_ranks_are_posteriors_and_unknown_stays_unknown():
    preds = [np.array([[0, 1, 2]]), np.array([[0, 1, 1]])]
    maps = [identity()] * 2
    cfg = ConsensusConfig(device="cpu", split="share")
    cal = calibrate(*class_counts(preds, maps, [1.0, 1.0], N_CLASSES, cfg), maps, N_CLASSES, cfg)
    labels, shares = vote_calibrated(preds, maps, [1.0, 1.0], N_CLASSES, cal, cfg, ranks=2)
    labels, shares = labels.numpy(), shares.numpy()
    assert labels[0, 0, 0] == 0 and shares[:, 0, 0].tolist() == [0.0, 0.0]  # nothing cast: unknown
    assert labels[0, 0, 1] == 1
    assert shares[0, 0, 1] + shares[1, 0, 1] == pytest.approx(1.0, abs=1e-5)  # two classes: posteriors sum to 1
    with pytest.raises(ValueError, match="calibration covers"):
        vote_calibrated(preds[:1], maps[:1], [1.0], N_CLASSES, cal, cfg)


# -- guards and reliability weights ----------------------------------------------------------------

from labelmaker.consensus import (  # noqa: E402
    agreement_counts,
    keep_clear_majorities,
    reliability_weights,
    vanishing_classes,
)


def test_vanishing_classes_names_a_real_class_that_calibration_erases():
    plain = np.array([0, 500, 300, 150, 1, 0, 0, 0, 0, 0])
    calibrated = np.array([0, 640, 290, 0, 0, 0, 0, 0, 0, 0])
    assert vanishing_classes(plain, calibrated, keep=0.5, min_share=0.01) == {3: 0.0}  # class 4 is too small to count
    assert vanishing_classes(plain, plain, keep=0.5, min_share=0.01) == {}


def test_keep_clear_majorities_calibrates_only_where_the_plain_vote_is_weak():
    plain = (torch.tensor([[1, 2, 3]]), torch.tensor([[1.0, 0.5, 0.34]]))
    calibrated = (torch.tensor([[4, 5, 6]]), torch.tensor([[0.9, 0.9, 0.9]]))
    labels, shares = keep_clear_majorities(plain, calibrated, 0.5)
    assert labels.tolist() == [[1, 5, 6]] and shares.tolist()[0][0] == 1.0


def test_reliability_weights_follow_agreement_with_the_other_models():
    """Model 0 is right everywhere, model 1 half the time, model 2 in frame 1 never (a bad frame):
    model 0 weighs most, and frame weights silence model 2's bad frame only."""
    rng = np.random.default_rng(0)
    truth = rng.integers(1, N_CLASSES, size=(2, 20, 20))
    half = np.where(rng.random(truth.shape) < 0.5, truth, rng.integers(1, N_CLASSES, size=truth.shape))
    bad = truth.copy()
    bad[1] = (truth[1] % (N_CLASSES - 1)) + 1  # every pixel of frame 1 wrong
    preds = [truth, half, bad]
    maps = [identity()] * 3
    cfg = ConsensusConfig(device="cpu", split="share")
    ref, agree, per_class = agreement_counts(preds, maps, [0, 1, 2], N_CLASSES, cfg)
    assert ref.shape == (3, 2) and (agree <= ref).all() and per_class[0] == 0
    per_model = reliability_weights(ref, agree, per_class, "model")
    assert per_model[0, 0] > max(per_model[1, 0], per_model[2, 0]) and min(per_model[:, 0]) > 0
    per_frame = reliability_weights(ref, agree, per_class, "frame", pseudo_pixels=10)
    assert per_frame[2, 1] == 0.0 and per_frame[2, 0] > per_frame[1, 0]
    # a model alone has no one to agree with: weight 1
    alone = reliability_weights(*agreement_counts(preds[:1], maps[:1], [0], N_CLASSES, ConsensusConfig(device="cpu")),
                                "frame")
    assert (alone == 1.0).all()
