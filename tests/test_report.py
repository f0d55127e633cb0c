import json

import numpy as np
import pytest
from PIL import Image

from labelmaker.mesh import read_mesh
from labelmaker.report import legend_image, render_mesh_views, side_by_side, write_png


@pytest.fixture(scope="module")
def synth_room(synth_scene_factory):
    scene = synth_scene_factory(n_frames=5)
    mesh = read_mesh(scene.gt_dir / "mesh.ply")
    labels = np.load(scene.gt_dir / "vertex_labels.npy")
    classes = json.loads((scene.gt_dir / "classes.json").read_text())
    names = [c["name"] for c in classes]
    palette = np.array([c["color"] for c in classes], np.uint8)
    return mesh, labels, names, palette


def _pixels(image):
    px = image.reshape(-1, 3)
    return px, (px == 255).all(axis=1)


def test_render_shapes_and_white_background(synth_room):
    mesh, labels, _, palette = synth_room
    images = render_mesh_views(mesh.vertices, mesh.triangles, palette[labels], width=120, height=90,
                               views=("oblique", "top", "oblique2"))
    assert len(images) == 3
    for image in images:
        assert image.shape == (90, 120, 3) and image.dtype == np.uint8
        _, white = _pixels(image)
        assert 0.05 < white.mean() < 0.8  # the room is framed, with background around it
        assert (image[0, 0] == 255).all() and (image[-1, -1] == 255).all()  # corners are background


def test_top_view_is_mostly_floor_with_furniture(synth_room):
    mesh, labels, names, palette = synth_room
    top, = render_mesh_views(mesh.vertices, mesh.triangles, palette[labels], width=160, height=120,
                             views=("top",), shade=False)
    px, white = _pixels(top)
    colours, counts = np.unique(px[~white], axis=0, return_counts=True)
    floor = palette[names.index("floor")]
    ceiling = palette[names.index("ceiling")]
    share = dict(zip(map(tuple, colours.tolist()), counts / counts.sum()))
    assert max(share, key=share.get) == tuple(floor.tolist())  # the floor dominates
    assert 0.4 < share[tuple(floor.tolist())] < 0.95  # ... and furniture stands on it
    assert tuple(ceiling.tolist()) not in share  # the ceiling was culled
    assert len(share) >= 4


def test_shading_darkens_but_keeps_hue(synth_room):
    mesh, labels, names, palette = synth_room
    shaded, = render_mesh_views(mesh.vertices, mesh.triangles, palette[labels], width=80, height=60,
                                views=("top",))
    flat, = render_mesh_views(mesh.vertices, mesh.triangles, palette[labels], width=80, height=60,
                              views=("top",), shade=False)
    hit = ~(flat == 255).all(axis=2)
    assert (shaded[hit].astype(int) <= flat[hit].astype(int) + 1).all()
    assert shaded[hit].mean() > 0.5 * flat[hit].mean()


def test_render_without_culling_needs_height_cut(synth_room):
    mesh, labels, names, palette = synth_room
    kwargs = dict(width=80, height=60, views=("top",), shade=False, cull_backfaces=False)
    closed, = render_mesh_views(mesh.vertices, mesh.triangles, palette[labels], **kwargs)
    cut, = render_mesh_views(mesh.vertices, mesh.triangles, palette[labels], max_height=2.0, **kwargs)
    ceiling = palette[names.index("ceiling")]
    floor = palette[names.index("floor")]
    assert (closed == ceiling).all(axis=2).mean() > 0.5  # without culling the ceiling hides the room
    assert (cut == floor).all(axis=2).mean() > 0.3


def test_render_empty_mesh_and_bad_view():
    empty, = render_mesh_views(np.zeros((0, 3)), np.zeros((0, 3), int), np.zeros((0, 3), np.uint8),
                               width=20, height=10, views=("top",))
    assert empty.shape == (10, 20, 3) and (empty == 255).all()
    tri = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32)
    with pytest.raises(ValueError, match="view"):
        render_mesh_views(tri, np.array([[0, 1, 2]]), np.zeros((3, 3), np.uint8), views=("side",))


def test_side_by_side_sizes():
    a = np.zeros((40, 30, 3), np.uint8)
    b = np.full((50, 20, 3), 100, np.uint8)
    out = side_by_side([a, b], ["first", "second"], gap=8, title_height=20)
    assert out.shape == (20 + 50, 30 + 8 + 20, 3) and out.dtype == np.uint8
    assert (out[20:60, :30] == 0).all() and (out[20:70, 38:58] == 100).all()
    assert (out[60:, :30] == 255).all()  # padding below the shorter image is white
    assert (out[:20] < 128).any()  # a title was drawn
    with pytest.raises(ValueError):
        side_by_side([a], ["x", "y"])


def test_legend_and_png(tmp_path):
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 0, 255]], np.uint8)
    names = np.array(["unlabeled", "wall", "floor"])
    ids = [1, 2]
    legend = legend_image(ids, list(names[ids]), palette[ids])  # one name and colour per id
    assert legend.ndim == 3 and legend.shape[2] == 3 and legend.dtype == np.uint8
    px = legend.reshape(-1, 3)
    assert ((px == [255, 0, 0]).all(axis=1)).any() and ((px == [0, 0, 255]).all(axis=1)).any()
    many = legend_image(range(45), [f"c{i}" for i in range(45)], np.zeros((45, 3), np.uint8), rows_per_column=20)
    assert many.shape[1] > legend.shape[1]  # three columns
    with pytest.raises(ValueError, match="one name"):
        legend_image(ids, list(names), palette)
    path = tmp_path / "out" / "legend.png"
    write_png(path, legend)
    np.testing.assert_array_equal(np.asarray(Image.open(path).convert("RGB")), legend)
    assert [p.name for p in path.parent.iterdir()] == ["legend.png"]


def test_top_view_independent_of_yaw_and_up_axis(synth_room):
    mesh, labels, names, palette = synth_room
    floor = palette[names.index("floor")]

    def shares(vertices, **kwargs):
        top, = render_mesh_views(vertices, mesh.triangles, palette[labels], width=120, height=90,
                                 views=("top",), shade=False, **kwargs)
        return (top == 255).all(axis=2).mean(), (top == floor).all(axis=2).mean()

    reference = shares(mesh.vertices)
    yaw = np.radians(30.0)
    rot = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
    turned = shares(mesh.vertices @ rot.T)  # walls not along the world axes
    y_up = shares(mesh.vertices[:, [1, 2, 0]], up=(0.0, 1.0, 0.0))  # ARKit-style y-up world
    np.testing.assert_allclose(turned, reference, atol=0.02)
    np.testing.assert_allclose(y_up, reference, atol=0.02)
