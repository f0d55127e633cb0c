"""The simulated segmenters' error-model families (segmenters/simulated.py, configs/models/simulated_*.yaml)
and the simulated masks' persistent errors: each family errs in its own kind."""
import numpy as np
import pytest

from labelmaker.config import load_config
from labelmaker.masks.base import SimulatedMaskNoise
from labelmaker.masks.simulated import simulate_masks
from labelmaker.segmenters.base import SimulatedNoise
from labelmaker.segmenters.simulated import SimulatedSegmenter, corrupt

FAMILIES = ["simulated", "simulated_instances", "simulated_coarse", "simulated_segmentation", "simulated_bad_frames",
            "simulated_one_bad", "simulated_correlated"]
QUIET = dict(confused_classes=0.0, confusion_rate=0.0, instance_error_rate=0.0, boundary_px=0, blobs_per_frame=0.0,
             small_object_px=0, bad_frame_rate=0.0)


def _room():
    """A 60x80 frame: a wall (instance 1, class 1) with four objects (instances 2..5, classes 5..8)."""
    labels = np.ones((60, 80), np.int64)
    instances = np.ones((60, 80), np.int64)
    for k, (y, x) in enumerate([(5, 5), (5, 45), (35, 5), (35, 45)]):
        labels[y:y + 20, x:x + 30] = 5 + k
        instances[y:y + 20, x:x + 30] = 2 + k
    return labels, instances, np.array([1, 5, 6, 7, 8])


def _frames(noise, n=20, seed=0, error_seed=None):
    labels, instances, classes = _room()
    table = np.arange(20)
    table[5] = 6  # this model mistakes class 5 for 6
    out = []
    for f in range(n):
        err = None if error_seed is None else np.random.default_rng([error_seed, f, 1])
        out.append(corrupt(labels, instances, classes, table, noise, np.random.default_rng([seed, f]), err_rng=err,
                           extra_rng=np.random.default_rng([seed, f, 2]),
                           error_seed=seed if error_seed is None else error_seed))
    return labels, instances, np.stack(out)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_is_a_preset_of_three_models(family):
    models = load_config([f"models={family}"])[0].segment.models
    assert sorted(m.label_space for m in models.values()) == ["ade20k", "nyu40", "scannet200"]
    for name, m in models.items():
        SimulatedSegmenter(name, m)  # merge_classes name real classes of each space


def test_sticky_instances_are_wrong_in_every_frame_and_the_others_never():
    labels, instances, frames = _frames(SimulatedNoise(**QUIET, sticky_instances=0.5, sticky_rate=1.0), seed=3)
    wrong = [(frames[:, instances == i] != labels[instances == i][0]).all(1).mean() for i in range(1, 6)]
    assert set(wrong) == {0.0, 1.0}, wrong  # an instance is wrong in all frames or in none
    assert 0 < sum(wrong) < 5


def test_class_confusion_hits_every_instance_of_the_class_at_its_rate():
    labels, instances, frames = _frames(SimulatedNoise(**{**QUIET, "confusion_rate": 0.5}), n=40)
    wrong = (frames[:, labels == 5] == 6).all(1).mean()
    assert 0.25 < wrong < 0.75 and (frames[:, labels != 5] == labels[labels != 5]).all()


def test_shared_error_seed_makes_errors_correlated():
    noise = SimulatedNoise(**{**QUIET, "confusion_rate": 0.5, "sticky_instances": 0.3})
    labels, _, a = _frames(noise, n=30, seed=1, error_seed=7)
    _, _, b = _frames(noise, n=30, seed=2, error_seed=7)
    _, _, c = _frames(noise, n=30, seed=3)
    assert (a != labels).any() and np.array_equal(a != labels, b != labels)
    assert not np.array_equal(a != labels, c != labels)


def test_segmentation_errors_split_and_merge_instances_into_their_neighbours():
    labels, instances, frames = _frames(SimulatedNoise(**QUIET, split_rate=1.0))
    inside = instances == 2
    share = (frames[:, inside] == 1).mean(1)  # the part cut off takes the wall's class (its largest neighbour)
    assert ((share > 0.1) & (share < 0.9)).all()
    labels, instances, frames = _frames(SimulatedNoise(**QUIET, merge_rate=1.0))
    assert (frames[:, instances == 3] == 1).all()


def test_bad_frames_are_shifted_rotated_or_blurred_as_a_whole():
    labels, _, frames = _frames(SimulatedNoise(**QUIET, warp_frame_rate=0.5), n=30)
    off = (frames != labels).mean((1, 2))
    assert 5 <= (off > 0.01).sum() <= 25 and (off[off > 0] > 0.01).all()  # a frame is either intact or off


def test_coarse_label_space_says_otherprop(synth_scene_factory):
    from labelmaker.labels import label_space

    models = load_config(["models=simulated_coarse"])[0].segment.models
    nyu = SimulatedSegmenter("sim_nyu40", models["sim_nyu40"])
    from labelmaker.labels import unified_space

    assert nyu.to_space[unified_space().id_of("lamp")] == label_space("nyu40").id_of("otherprop")
    bad = models["sim_nyu40"]
    bad.noise.merge_classes = {"lamp": "no such class"}
    with pytest.raises(ValueError, match="merge_classes"):
        SimulatedSegmenter("sim_nyu40", bad)


def test_persistent_masks_make_the_same_mistake_in_every_frame():
    _, instances, _ = _room()
    noise = SimulatedMaskNoise(miss_rate=0.3, split_rate=0.0, merge_rate=0.0, boundary_px=0, persistent=True)

    def missed_in(frame):
        masks = simulate_masks(instances, noise, np.random.default_rng(frame), instance_seed=4)
        return tuple((masks[instances == i] == 0).all() for i in range(1, 6))

    assert len({missed_in(f) for f in range(10)}) == 1
    noise.persistent = False
    assert len({missed_in(f) for f in range(10)}) > 1
