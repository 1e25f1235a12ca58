import re

import numpy as np
import pytest
from PIL import Image

from keras_reptile.data.preprocessing import load_image, omniglot_bits, read_rgb


def _save(path, pixels):
    Image.fromarray(np.asarray(pixels)).save(path)
    return path


def _omniglot_png(tmp_path):
    """A 105x105 1-bit PNG, background 1, with five stroke pixels.

    NEAREST from 105 to 28 samples input index floor((i + 0.5) * 105 / 28): output 0 reads
    input 1 and output 27 reads input 103; input pixels 0 and 104 are never read.
    """
    pixels = np.ones((105, 105), bool)
    for row, col in ((0, 0), (1, 1), (103, 103), (104, 104), (1, 103)):
        pixels[row, col] = False
    return _save(tmp_path / "char.png", pixels)


def _omniglot_expected():
    expected = np.ones((28, 28), np.uint8)
    expected[0, 0] = expected[27, 27] = expected[0, 27] = 0
    return expected


def _rgb_3x2_png(tmp_path):
    """A 3 wide, 2 high RGB PNG whose 1x1 BILINEAR resize is (70, 200, 20).

    Horizontally (scale 3) the triangle filter weighs the 3 pixels 2/7, 3/7, 2/7:
    red rows become 30 and 110, blue rows 10 and 30. Vertically (scale 2) the two rows weigh
    1/2 each: red (30 + 110) / 2 = 70, blue (10 + 30) / 2 = 20; green is constant.
    """
    pixels = np.zeros((2, 3, 3), np.uint8)
    pixels[..., 0] = [[0, 70, 0], [140, 70, 140]]
    pixels[..., 1] = 200
    pixels[..., 2] = [[10, 10, 10], [30, 30, 30]]
    return _save(tmp_path / "rgb.png", pixels)


def test_omniglot_bits_resizes_1bit_image_with_nearest(tmp_path):
    with Image.open(_omniglot_png(tmp_path)) as image:
        assert image.mode == "1"
        bits = omniglot_bits(image)
    assert bits.dtype == np.uint8
    np.testing.assert_array_equal(bits, _omniglot_expected())


def test_omniglot_bits_thresholds_gray_and_color_images():
    gray = np.full((28, 28), 255, np.uint8)
    gray[0, :4] = [0, 127, 128, 255]
    expected = np.ones((28, 28), np.uint8)
    expected[0, :2] = 0
    np.testing.assert_array_equal(omniglot_bits(Image.fromarray(gray)), expected)

    # Luma L = (299 R + 587 G + 114 B) / 1000: pure red is 76 (stroke), pure green 150.
    color = np.zeros((28, 28, 3), np.uint8)
    color[..., 1] = 255
    color[5, 7] = (255, 0, 0)
    expected = np.ones((28, 28), np.uint8)
    expected[5, 7] = 0
    np.testing.assert_array_equal(omniglot_bits(Image.fromarray(color)), expected)


def test_read_rgb_keeps_pixels_of_the_right_size(tmp_path):
    pixels = np.array([[[1, 2, 3], [4, 5, 6]], [[7, 8, 9], [250, 251, 252]]], np.uint8)
    rgb = read_rgb(_save(tmp_path / "a.png", pixels), 2)
    assert rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, pixels)

    gray = read_rgb(_save(tmp_path / "gray.png", np.full((2, 2), 7, np.uint8)), 2)
    np.testing.assert_array_equal(gray, np.full((2, 2, 3), 7))
    rgba = np.concatenate([pixels, np.full((2, 2, 1), 9, np.uint8)], axis=-1)
    np.testing.assert_array_equal(read_rgb(str(_save(tmp_path / "rgba.png", rgba)), 2), pixels)


def test_read_rgb_resizes_with_bilinear(tmp_path):
    path = _rgb_3x2_png(tmp_path)
    np.testing.assert_array_equal(read_rgb(path, 1), [[[70, 200, 20]]])
    # Upsampling a solid colour keeps it.
    solid = _save(tmp_path / "solid.png", np.full((1, 1, 3), (9, 99, 199), np.uint8))
    np.testing.assert_array_equal(read_rgb(solid, 84), np.full((84, 84, 3), (9, 99, 199)))


def test_load_image_omniglot_shape_gives_float_bits(tmp_path):
    image = load_image(str(_omniglot_png(tmp_path)), (28, 28, 1))
    assert image.dtype == np.float32 and image.shape == (28, 28, 1)
    np.testing.assert_array_equal(image[..., 0], _omniglot_expected())


def test_load_image_square_rgb_shape_scales_to_unit_range(tmp_path):
    pixels = np.array([[[0, 255, 51], [102, 0, 0]], [[255, 255, 255], [0, 0, 0]]], np.uint8)
    image = load_image(_save(tmp_path / "a.png", pixels), [2, 2, 3])
    assert image.dtype == np.float32 and image.shape == (2, 2, 3)
    expected = [[[0, 1, 0.2], [0.4, 0, 0]], [[1, 1, 1], [0, 0, 0]]]
    np.testing.assert_allclose(image, expected, rtol=1e-6)

    resized = load_image(_rgb_3x2_png(tmp_path), (1, 1, 3))
    np.testing.assert_allclose(resized, [[[70 / 255, 200 / 255, 20 / 255]]], rtol=1e-6)


@pytest.mark.parametrize(
    "shape", [(28, 28), (4, 5, 1), (28, 28, 2), (4, 5, 3), (0, 0, 3), (-1, -1, 3), (2, 2, 3, 1)]
)
def test_load_image_rejects_other_input_shapes(tmp_path, shape):
    path = _rgb_3x2_png(tmp_path)
    with pytest.raises(ValueError, match=re.escape(f"Received: input_shape={shape}, path={path}")):
        load_image(path, shape)


def test_load_image_square_gray_shape_keeps_gray_levels(tmp_path):
    # Any gray shape but Omniglot's (28, 28, 1) keeps gray levels: Pillow's "L" conversion.
    path = _save(tmp_path / "gray.png", np.full((6, 4), 100, np.uint8))
    x = load_image(path, (3, 3, 1))
    assert x.shape == (3, 3, 1) and x.dtype == np.float32
    np.testing.assert_allclose(x, 100 / 255, rtol=1e-6)
    color = _save(tmp_path / "color.png", np.full((2, 2, 3), (255, 0, 0), np.uint8))
    np.testing.assert_allclose(load_image(color, (2, 2, 1)), 76 / 255, rtol=1e-6)  # L = 0.299 R


def test_stored_pixels_is_load_image_before_scaling(tmp_path):
    from keras_reptile.data.preprocessing import pixel_scale, stored_pixels

    path = _rgb_3x2_png(tmp_path)
    for shape in ((28, 28, 1), (5, 5, 1), (5, 5, 3)):
        with Image.open(path) as image:
            pixels = stored_pixels(image, shape)
        assert pixels.dtype == np.uint8 and pixels.shape == shape
        np.testing.assert_array_equal(
            pixels.astype(np.float32) * np.float32(pixel_scale(shape)), load_image(path, shape)
        )


@pytest.mark.parametrize("shape", [(28, 28, 1), (84, 84, 3)])
def test_load_image_missing_or_unreadable_file_raises(tmp_path, shape):
    missing = tmp_path / "missing.png"
    with pytest.raises(
        ValueError, match=f"does not exist. Received: path={re.escape(str(missing))}"
    ):
        load_image(str(missing), shape)

    text = tmp_path / "notes.png"
    text.write_text("not an image")
    png = _save(tmp_path / "full.png", np.zeros((30, 30, 3), np.uint8)).read_bytes()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(png[: len(png) // 2])
    for path in (text, truncated, tmp_path):
        with pytest.raises(ValueError, match=f"Received: path={re.escape(str(path))}$"):
            load_image(path, shape)


def test_read_rgb_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_rgb(tmp_path / "missing.png", 84)
    path = _rgb_3x2_png(tmp_path)
    for size in (0, -3, 2.5, True, "84"):
        with pytest.raises(ValueError, match=re.escape(f"Received: size={size!r}")):
            read_rgb(path, size)
