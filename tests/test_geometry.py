import numpy as np
import pytest
from scipy.spatial.transform import Rotation, Slerp

from labelmaker.geometry import (
    camera_centres,
    interpolate_poses,
    invert_transforms,
    make_transforms,
    matrix_to_quat,
    quat_to_matrix,
    rotation_angle_deg,
    rotvec_to_matrix,
    slerp_matrices,
    upright_rotations,
)


def _random_T(rng, n):
    return make_transforms(Rotation.random(n, random_state=rng.integers(1 << 31)).as_matrix(), rng.normal(size=(n, 3)))


def test_invert_transforms_is_inverse():
    rng = np.random.default_rng(0)
    T = _random_T(rng, 5)
    assert np.allclose(invert_transforms(T) @ T, np.eye(4), atol=1e-12)


def test_interpolation_hits_samples_and_flags_gaps():
    rng = np.random.default_rng(1)
    times = np.array([0.0, 0.1, 0.2, 0.5])
    T = _random_T(rng, 4)
    out, ok, reason = interpolate_poses(times, T, np.array([0.1, 0.15, 0.35, 0.6, -0.01]), max_gap=0.1)
    assert np.allclose(out[0], T[1], atol=1e-9)
    assert ok.tolist() == [True, True, False, False, False]
    assert reason.tolist() == ["", "", "gap", "outside", "outside"]


def test_interpolation_moves_camera_centre_linearly():
    # Two poses with the same centre and different orientations: the centre must not move.
    R = Rotation.from_euler("z", [[0], [90]], degrees=True).as_matrix()
    centre = np.array([1.0, 2.0, 3.0])
    T_wc = make_transforms(R, np.stack([centre, centre]))
    out, ok, _ = interpolate_poses(np.array([0.0, 1.0]), invert_transforms(T_wc), np.array([0.5]), max_gap=1.0)
    assert ok.all()
    assert np.allclose(camera_centres(out)[0], centre)
    assert rotation_angle_deg(out[0, :3, :3], invert_transforms(T_wc)[0, :3, :3]) == pytest.approx(45.0)


@pytest.mark.parametrize(
    "roll_deg, expected_k",
    [(0, 0), (180, 2), (90, None), (-90, None)],
)
def test_upright_rotation_puts_gravity_down_in_the_image(roll_deg, expected_k):
    """Roll an upright camera; the returned k must rotate a gravity arrow to the image bottom."""
    # Camera looking along world +y, world z up: OpenCV camera y (down) = world -z.
    R_wc = np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]])
    roll = Rotation.from_euler("z", roll_deg, degrees=True).as_matrix()
    T_cw = invert_transforms(make_transforms((R_wc @ roll)[None], np.zeros((1, 3))))
    k = int(upright_rotations(T_cw, np.array([0, 0, 1.0]))[0])
    if expected_k is not None:
        assert k == expected_k
    # Paint the image row band where gravity points, rotate by k, it must end at the bottom.
    g = T_cw[0, :3, :3] @ np.array([0, 0, -1.0])
    img = np.zeros((9, 9))
    img[4 + int(np.rint(4 * g[1])), 4 + int(np.rint(4 * g[0]))] = 1
    rotated = np.rot90(img, k)
    r, c = np.argwhere(rotated == 1)[0]
    assert (r, c) == (8, 4)


def test_canonical_mesh_order_is_independent_of_the_input_order():
    """TSDF extraction returns vertices in hash-map order; canonical_order makes two fusions of
    the same frames byte-identical, keeping every triangle and its orientation."""
    from labelmaker.mesh import MeshArrays, canonical_order

    rng = np.random.default_rng(0)
    verts = rng.random((50, 3)).astype(np.float32)
    tris = np.array([rng.choice(50, 3, replace=False) for _ in range(80)], np.int32)
    colors = rng.integers(0, 255, (50, 3), dtype=np.uint8)
    mesh = MeshArrays(verts, tris, colors, verts * 2)
    perm = rng.permutation(50)
    inv = np.argsort(perm)
    shuffled_tris = np.roll(inv[tris], 1, axis=1)[rng.permutation(80)]  # rotated: same orientation
    other = MeshArrays(verts[perm], shuffled_tris, colors[perm], (verts * 2)[perm])
    a, b = canonical_order(mesh), canonical_order(other)
    for x, y in [(a.vertices, b.vertices), (a.triangles, b.triangles), (a.colors, b.colors), (a.normals, b.normals)]:
        assert np.array_equal(x, y)
    assert np.all(np.diff(a.vertices[:, 0]) >= 0)

    def oriented(m):  # each triangle as its corner positions, starting at its smallest corner
        out = []
        for corners in m.vertices[m.triangles].tolist():
            k = corners.index(min(corners))
            out.append(tuple(map(tuple, corners[k:] + corners[:k])))
        return sorted(out)

    assert oriented(a) == oriented(mesh)


def test_numpy_rotations_agree_with_scipy():
    """Our rotation vectors, quaternions and slerp (numpy, no 0.3 s scipy.spatial import) give
    scipy's rotations to rounding, for large, small and zero angles and for a trajectory."""
    rng = np.random.default_rng(3)
    rotvecs = rng.normal(size=(600, 3)) * np.repeat([3.0, 1e-4, 1e-9], 200)[:, None]
    rotvecs[0] = 0.0
    assert np.abs(rotvec_to_matrix(rotvecs) - Rotation.from_rotvec(rotvecs).as_matrix()).max() < 1e-14
    R = Rotation.random(300, random_state=4).as_matrix()
    assert np.abs(quat_to_matrix(matrix_to_quat(R)) - R).max() < 1e-14
    for steps in (1.0, 0.02):  # far apart, and a smooth trajectory
        R = Rotation.from_rotvec(np.cumsum(rng.normal(size=(80, 3)) * steps, 0)).as_matrix()
        times = np.cumsum(rng.uniform(0.05, 0.2, 80))
        query = np.r_[times[:3], rng.uniform(times[0], times[-1], 500), times[-1]]
        expected = Slerp(times, Rotation.from_matrix(R))(query).as_matrix()
        assert np.abs(slerp_matrices(times, R, query) - expected).max() < 1e-13
