"""The demo's Python side without a browser: its files, its drawings, and `strokes_to_image`."""

import json

import numpy as np
import pytest

from keras_reptile.data.omniglot import load_omniglot
from keras_reptile.data.preprocessing import (
    STROKE_INK_EXTENT,
    STROKE_PEN_WIDTH,
    strokes_to_image,
)
from serving.demo import make_data, site
from serving.errors import ServingError
from tests.conftest import OMNIGLOT_DIR, needs_omniglot


def _ink_box(image: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(image == 0)
    return rows.min(), rows.max(), cols.min(), cols.max()


# strokes_to_image.


def test_a_horizontal_line_is_the_pixels_within_half_a_pen_of_it():
    # Longer side 100 -> 18 - 1.25 = 16.75 pixels, centred: x in [5.625, 22.375] at y = 14.
    # Pixel centres 13.5 and 14.5 are 0.5 from it (<= 0.625); columns 5 (centre 5.5, 0.515 from
    # the end) to 22 are ink, column 4 (1.13 from the end) is not.
    image = strokes_to_image([[(0.0, 0.0), (100.0, 0.0)]])
    expected = np.ones((28, 28), np.uint8)
    expected[13:15, 5:23] = 0
    assert image.dtype == np.uint8
    np.testing.assert_array_equal(image, expected)


@pytest.mark.parametrize(
    "strokes",
    [
        [[(0, 0), (0, 100), (50, 100)]],  # an L, twice as tall as wide
        [[(10, 10), (90, 30)], [(50, 0), (50, 40)]],  # wider than tall
        [[(3, 3), (4, 7), (9, 2), (1, 1)], [(5, 5)]],  # small, with a dot
    ],
)
def test_the_ink_spans_the_data_s_extent_centred(strokes):
    image = strokes_to_image(strokes)
    top, bottom, left, right = _ink_box(image)
    # The continuous ink box spans STROKE_INK_EXTENT; sampling at pixel centres gives +-1 pixel.
    extent = make_data.ink_extents(image)
    assert abs(int(extent) - STROKE_INK_EXTENT) <= 1
    assert abs((top + bottom + 1) / 2 - 14) <= 1 and abs((left + right + 1) / 2 - 14) <= 1
    points = np.concatenate([np.float64(s).reshape(-1, 2) for s in strokes])
    width, height = points.max(0) - points.min(0)
    drawn = ((right - left + 1) - STROKE_PEN_WIDTH) / ((bottom - top + 1) - STROKE_PEN_WIDTH)
    assert drawn == pytest.approx(width / height, rel=0.25)  # the aspect ratio is kept


def test_position_and_scale_of_the_drawing_do_not_matter():
    strokes = [[(12.5, 40.25), (30.0, 22.0), (47.75, 61.5)], [(20.0, 20.0), (44.0, 58.0)]]
    moved = [[(4 * x - 300.0, 4 * y + 1000.0) for x, y in s] for s in strokes]  # exact in float
    np.testing.assert_array_equal(strokes_to_image(strokes), strokes_to_image(moved))


def test_size_scales_the_extent_and_the_pen():
    # Twice the 28x28 line: x from 11.25 to 44.75 at y = 28, pen radius 1.25. Ink: columns 10
    # (centre 10.5, 0.9 from the end) to 45, rows 27 and 28 (0.5 from the line; 1.5 is too far).
    image = strokes_to_image([[(0, 0), (100, 0)]], size=56)
    expected = np.ones((56, 56), np.uint8)
    expected[27:29, 10:46] = 0
    np.testing.assert_array_equal(image, expected)


def test_a_single_point_is_a_dot_at_the_centre():
    image = strokes_to_image([[(5.0, 5.0)]], size=56)  # pen radius 1.25: centres 0.71 away
    expected = np.ones((56, 56), np.uint8)
    expected[27:29, 27:29] = 0
    np.testing.assert_array_equal(image, expected)


@pytest.mark.parametrize(
    "strokes, size, message",
    [
        ([], 28, "strokes=[]"),
        ([[]], 28, "stroke=[]"),
        ([[(0, 0), (1, float("nan"))]], 28, "stroke="),
        ([[(0, 0, 0)]], 28, "stroke="),
        ([[(0, 0)]], 0, "size=0"),
    ],
)
def test_strokes_to_image_errors_name_what_they_received(strokes, size, message):
    with pytest.raises(ValueError, match="Received: " + message.replace("[", r"\[")):
        strokes_to_image(strokes, size)


# The shipped drawings.


def test_bits_round_trip_through_hex():
    image = (np.random.default_rng(0).random((28, 28)) > 0.5).astype(np.uint8)
    text = make_data.encode_bits(image)
    assert len(text) == 196
    np.testing.assert_array_equal(make_data.decode_bits(text), image)
    with pytest.raises(ValueError, match="Received: len"):
        make_data.decode_bits(text[:-1])


def test_the_shipped_drawings_are_20_characters_of_6_drawings():
    data = json.loads(make_data.DATA_FILE.read_text())
    assert len(data["characters"]) == make_data.CHARACTERS == 20
    assert len({c["name"] for c in data["characters"]}) == 20
    for character in data["characters"]:
        assert len(character["drawings"]) == make_data.DRAWINGS == 6
        for text in character["drawings"]:
            image = make_data.decode_bits(text)
            assert 10 < (image == 0).sum() < 300  # ink, on a background of 1
    assert make_data.DATA_FILE.stat().st_size < 100_000
    readme = (make_data.DATA_FILE.parent / "README.md").read_text()
    assert "MIT License" in readme and "Lake" in readme and "brendenlake/omniglot" in readme


@pytest.mark.slow
@needs_omniglot
def test_make_data_reproduces_the_shipped_drawings_and_the_extent_constant():
    data, stats = make_data.make_data(str(OMNIGLOT_DIR))
    assert data == json.loads(make_data.DATA_FILE.read_text())
    assert stats["ink_extent_median"] == STROKE_INK_EXTENT
    test_names = set(load_omniglot(str(OMNIGLOT_DIR), augment=False).test.names)
    assert {c["name"] for c in data["characters"]} <= test_names  # never a training character


# Static files.


@pytest.mark.parametrize(
    "name, content_type",
    [
        ("index.html", "text/html; charset=utf-8"),
        ("demo.js", "text/javascript; charset=utf-8"),
        ("demo.css", "text/css; charset=utf-8"),
        ("data/omniglot_test.json", "application/json"),
        ("data/README.md", "text/markdown; charset=utf-8"),
    ],
)
def test_static_files_are_served_with_their_type(name, content_type):
    data, served_type = site.static_file(name)
    assert served_type == content_type
    assert data == (site.DEMO_DIR / name).read_bytes()


@pytest.mark.parametrize(
    "name",
    [
        "../rest.py",
        "%2e%2e/rest.py",
        "data/../../rest.py",
        "..%2f..%2fpyproject.toml",
        "/etc/passwd",
        "..\\rest.py",
        "data/%00.json",
        "site.py",  # a file of the folder, but not of the page
        "make_data.py",
        "data",
        "data/",
        "nope.html",
    ],
)
def test_static_file_refuses_anything_else(name):
    with pytest.raises(ServingError) as error:
        site.static_file(name)
    assert error.value.http_status == 404


def test_the_page_loads_nothing_from_elsewhere():
    for name in ("index.html", "demo.js", "demo.css"):
        text = (site.DEMO_DIR / name).read_text()
        assert "://" not in text, name  # same origin only: no CDN, no other host
