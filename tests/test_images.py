"""Frame decoding with OpenCV (labelmaker/io/images.py): the same arrays PIL gives, RGB order,
16-bit depth kept, label maps (palette PNGs) as indices, and damaged files as one BadInputError."""

import io

import numpy as np
import pytest
from PIL import Image

from labelmaker.errors import BadInputError
from labelmaker.io.images import read_image

RNG = np.random.default_rng(3)


def _photo(h=48, w=64) -> np.ndarray:
    """A smooth colour image (JPEG-friendly) with distinct R, G and B."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 255 // w, yy * 255 // h, np.full((h, w), 40)], axis=-1).astype(np.uint8)


@pytest.mark.parametrize("suffix", ["jpg", "png"])
def test_colour_frames_decode_as_pil_decodes_them(tmp_path, suffix):
    path = tmp_path / f"frame.color.{suffix}"
    Image.fromarray(_photo()).save(path, quality=90)
    got = read_image(path, "scene", "color")
    with Image.open(path) as img:
        assert got.dtype == np.uint8 and np.array_equal(got, np.array(img.convert("RGB")))
    if suffix == "png":  # lossless: the red channel really is the first
        assert np.array_equal(got, _photo())


def test_grey_and_rgba_colour_frames_become_rgb(tmp_path):
    grey = RNG.integers(0, 256, (20, 30), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    assert np.array_equal(read_image(tmp_path / "grey.png", "s", "color"), np.repeat(grey[:, :, None], 3, axis=2))
    rgba = RNG.integers(0, 256, (20, 30, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert np.array_equal(read_image(tmp_path / "rgba.png", "s", "color"), rgba[:, :, :3])


def test_depth_keeps_16_bits_and_label_maps_keep_palette_indices(tmp_path):
    depth = RNG.integers(0, 65535, (20, 30), dtype=np.uint16)
    Image.fromarray(depth).save(tmp_path / "d.png")
    got = read_image(tmp_path / "d.png", "s", "depth")
    assert got.dtype == np.uint16 and np.array_equal(got, depth)
    labels = RNG.integers(0, 150, (20, 30), dtype=np.uint8)
    img = Image.fromarray(labels, "L").convert("P")
    img.putpalette([(i * 37) % 256 for i in range(768)])
    img.save(tmp_path / "labels.png")
    assert np.array_equal(read_image(tmp_path / "labels.png", "s", "prediction"), labels)


def test_damaged_frames_are_bad_input(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(_photo(200, 200)).save(buf, "JPEG")
    jpeg = buf.getvalue()
    (tmp_path / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])  # OpenCV alone would decode it with a grey bottom
    with pytest.raises(BadInputError, match="cut.jpg.*color image cannot be decoded.*truncated"):
        read_image(tmp_path / "cut.jpg", "kitchen", "color")
    Image.fromarray(RNG.integers(0, 65535, (50, 50), dtype=np.uint16)).save(tmp_path / "d.png")
    data = (tmp_path / "d.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInputError, match="depth image cannot be decoded.*truncated.*Fix:"):
        read_image(tmp_path / "cut.png", "kitchen", "depth")
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png" + b"IEND\xaeB`\x82")
    with pytest.raises(BadInputError, match="junk.png.*cannot be decoded"):
        read_image(tmp_path / "junk.png", "kitchen", "depth")
    with pytest.raises(BadInputError, match="gone.jpg.*missing"):
        read_image(tmp_path / "gone.jpg", "kitchen", "color")


def test_colour_resizing_averages_when_shrinking_and_interpolates_when_enlarging():
    from labelmaker.io.images import resize_color

    image = RNG.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    half = resize_color(image, (30, 20))
    blocks = image.reshape(20, 2, 30, 2, 3).astype(float).mean(axis=(1, 3))
    assert half.shape == (20, 30, 3) and np.abs(half - blocks).max() <= 1  # area average, no aliasing
    ramp = np.repeat(np.repeat((np.arange(60) * 4)[None, :, None], 40, axis=0), 3, axis=2).astype(np.uint8)
    double = resize_color(ramp, (120, 80)).astype(int)  # bilinear: a linear ramp stays linear (2 per pixel)
    assert double.shape == (80, 120, 3) and np.abs(np.diff(double[:, 2:-2], axis=1) - 2).max() <= 1
    assert resize_color(image, (60, 40)) is image
