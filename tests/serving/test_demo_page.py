"""The demo page in headless Chromium against the real server serving `saved_models/`.

Skipped, with the reason, where Chromium, ChromeDriver or selenium is missing.
"""

import http.client
import json
import math
import os

import numpy as np
import pytest

from keras_reptile.data.preprocessing import (
    OMNIGLOT_IMAGE_SIZE,
    STROKE_INK_EXTENT,
    STROKE_PEN_WIDTH,
    strokes_to_image,
)
from keras_reptile.export.model_card import ModelCard
from keras_reptile.export.saved_model import version_dir
from serving.client import Client
from serving.demo import make_data, site
from serving.launcher import REPO_ROOT, ServerProcess
from tests.serving import demo_browser as page

MAX_STEPS = 100  # the server's --max_inner_steps
ZOO = os.path.join(REPO_ROOT, "saved_models")
OMNI, SINE = "omniglot_5w", "sine"
SHIPPED = sorted(n for n in os.listdir(ZOO) if not n.startswith("."))  # every zoo model is served

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(page.browser_missing() is not None, reason=str(page.browser_missing())),
]


@pytest.fixture(scope="module")
def zoo_server():
    with ServerProcess(
        ["--file_system_poll_wait_seconds=0", f"--max_inner_steps={MAX_STEPS}"], cwd=REPO_ROOT
    ) as process:
        yield process


@pytest.fixture(scope="module")
def browser():
    with page.chromium() as driver:
        yield driver


@pytest.fixture
def omni_page(browser, zoo_server):
    page.open_demo(browser, zoo_server.rest_url, OMNI)
    page.wait_idle(browser)
    return browser


def card(name: str) -> ModelCard:
    return ModelCard.read(version_dir(os.path.join(ZOO, name)))


def newest_version(name: str) -> int:
    return int(os.path.basename(version_dir(os.path.join(ZOO, name))))


def get(server, path: str) -> tuple[int, dict, bytes]:
    """(status, headers, body) of a GET sent as written (`..` is not resolved by the client)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def images(bits) -> np.ndarray:
    """The page's nested [N][28][28][1] request values as a float32 array."""
    return np.asarray(bits, np.float32)


# The server's side of the demo.


def test_demo_paths_over_http(zoo_server):
    status, headers, _ = get(zoo_server, "/demo?x=1")
    assert (status, headers["Location"]) == (301, "/demo/?x=1")
    status, headers, body = get(zoo_server, "/demo/")
    assert (status, headers["Content-Type"]) == (200, "text/html; charset=utf-8")
    assert body == (site.DEMO_DIR / "index.html").read_bytes()
    status, headers, _ = get(zoo_server, "/demo/demo.js")
    assert (status, headers["Content-Type"]) == (200, "text/javascript; charset=utf-8")
    for path in ("/demo/../serving/rest.py", "/demo/%2e%2e/rest.py", "/demo/site.py", "/demo/x"):
        status, _, body = get(zoo_server, path)
        assert status == 404, path
        assert json.loads(body)["error"].startswith("Not found: /demo/")


def test_models_json_summarises_the_served_cards(zoo_server):
    status, headers, body = get(zoo_server, "/demo/models.json")
    assert (status, headers["Content-Type"]) == (200, "application/json")
    listing = json.loads(body)
    assert [m["name"] for m in listing["models"]] == SHIPPED and {OMNI, SINE} <= set(SHIPPED)
    for model in listing["models"]:
        expected = card(model["name"]).to_dict()
        assert model["version"] == newest_version(model["name"])
        for field in site.CARD_FIELDS:
            assert model[field] == expected[field], field
        assert {"adapt", "predict_adapted", "adapt_and_predict"} <= set(model["signatures"])
    assert listing["preprocessing"] == {
        "reference_size": OMNIGLOT_IMAGE_SIZE,
        "ink_extent": STROKE_INK_EXTENT,
        "pen_width": STROKE_PEN_WIDTH,
    }


def test_demo_false_turns_the_page_off():
    base = os.path.join(ZOO, SINE)
    args = ["--model_name=sine", f"--model_base_path={base}", "--demo=false"]
    with ServerProcess([*args, "--file_system_poll_wait_seconds=0"]) as off:
        for path in ("/demo/", "/demo", "/demo/models.json", "/demo/demo.js"):
            status, _, body = get(off, path)
            assert status == 404, path
            assert "--demo=false" in json.loads(body)["error"]
        assert get(off, "/v1/models/sine")[0] == 200


# The page.


def test_page_shows_the_model_and_its_card(omni_page):
    text = omni_page.find_element("id", "model-info").text
    omni = card(OMNI)
    assert f"{OMNI} v{newest_version(OMNI)}" in text and f"{omni.ways} ways" in text
    for shots in (1, 5):
        m = omni.find(shots=shots, transductive=False)
        assert f"{shots}-shot {100 * m.mean:.2f} \u00b1 {100 * m.ci95:.2f} %" in text
    assert omni_page.find_element("id", "steps").get_attribute("value") == str(
        omni.default_protocol.eval_iters
    )
    options = [o.text for o in omni_page.find_elements("css selector", "#model option")]
    assert options == SHIPPED


def test_the_page_rasterizes_strokes_exactly_as_python(omni_page):
    rng = np.random.default_rng(0)
    cases = [
        [[[0.0, 0.0], [100.0, 0.0]]],  # horizontal: no height
        [[[5.0, 5.0]]],  # one point
        [[[3.5, 3.5], [3.5, 3.5]], [[3.5, 3.5]]],  # every point the same
        [[[0.0, 0.0], [1e-6, 3e-6]]],  # tiny
        [[[-1e4, 2e4], [3e4, -5e3], [0.1, 0.2]]],  # huge and negative
    ]
    for _ in range(60):  # hand-like strokes: random walks with fractional pixels
        strokes = []
        for _ in range(rng.integers(1, 5)):
            start = rng.uniform(0, 100, 2)
            steps = rng.normal(0, 4, (rng.integers(0, 40), 2))
            strokes.append(np.vstack([start, start + np.cumsum(steps, axis=0)]).tolist())
        cases.append(strokes)
    script = (
        "return arguments[0].map(s => "
        "Array.from(demo.strokesToImage(s, arguments[1], demo.state.prep)))"
    )
    for size in (28, 56):
        js = np.asarray(omni_page.execute_script(script, cases, size), np.uint8)
        python = np.stack([strokes_to_image(s, size).reshape(-1) for s in cases])
        differing = (js != python).sum(axis=1)
        assert differing.tolist() == [0] * len(cases), size  # identical bits, every case
        assert (python == 0).any(axis=1)[5:].all()  # the random cases hold ink


SHAPES = {
    "x": [[(20, 20), (80, 80)], [(80, 20), (20, 80)]],
    "plus": [[(50, 15), (50, 85)], [(15, 50), (85, 50)]],
    "triangle": [[(20, 80), (50, 20), (80, 80), (20, 80)]],
}


def pads(driver, where: str):
    return driver.find_elements("css selector", f"{where} .pad")


def test_drawn_task_is_answered_with_bars(omni_page):
    driver = omni_page
    pointers = ("mouse", "mouse", "touch")  # the triangle is drawn with a finger
    for pad, strokes, pointer in zip(pads(driver, "#classes"), SHAPES.values(), pointers):
        page.draw(driver, pad, strokes, pointer=pointer)
    assert page.bars(driver) == [[]]  # no query yet: no answer
    assert "Draw at least one example" in driver.find_element("id", "status").text
    seq = page.last_seq(driver)
    page.draw(driver, pads(driver, "#queries")[0], [[(24, 22), (78, 76)], [(76, 24), (24, 78)]])
    last = page.wait_answer(driver, seq)  # no click: the change is enough

    # What the page drew is what the mouse did, and its inputs are the Python rule's.
    recorded = driver.execute_script(
        "return [...demo.state.classes.map(c => c[0]), ...demo.state.queries].map(c => c.strokes)"
    )
    assert recorded[0][0][0] == [20, 20] and recorded[0][0][-1] == [80, 80]
    assert recorded[2][0][0] == [20, 80] and len(recorded[2][0]) > 20  # every move a point
    expected = [strokes_to_image(strokes)[..., None] for strokes in recorded]
    request = last["request"]
    np.testing.assert_array_equal(images(request["support_images"]), np.stack(expected[:3]))
    np.testing.assert_array_equal(images(request["query_images"]), np.stack(expected[3:]))
    assert request["support_labels"] == [0, 1, 2]
    assert request["inner_steps"] == last["steps"] == card(OMNI).default_protocol.eval_iters

    (shown,) = page.bars(driver)
    probabilities = last["outputs"]["probabilities"][0]
    assert [b["cls"] for b in shown] == [0, 1, 2]
    assert [b["probability"] for b in shown] == probabilities[:3]
    assert [b["top"] for b in shown] == [True, False, False]  # the query is the X
    assert sum(probabilities) == pytest.approx(1, abs=1e-5)
    status = driver.find_element("id", "status").text
    js_round = math.floor(last["latencyMs"] + 0.5)  # Math.round: halves go up, not to even
    assert f"{js_round} ms" in status and "50 inner steps" in status

    # Undoing the query's last stroke sends the task again, by itself.
    seq = last["seq"]
    driver.find_elements("css selector", "#queries .undo")[0].click()
    again = page.wait_answer(driver, seq)
    assert len(again["request"]["query_images"]) == 1
    assert again["request"]["query_images"] != request["query_images"]


def test_changes_within_the_debounce_send_one_request(omni_page):
    driver = omni_page
    driver.find_element("id", "random-task").click()
    first = page.wait_answer(driver)
    page.type_steps(driver, "12")  # two changes ("1", "12") within 300 ms
    last = page.wait_answer(driver, first["seq"])
    assert (last["seq"], last["steps"]) == (first["seq"] + 1, 12)
    assert "12 inner steps" in driver.find_element("id", "status").text


def test_undo_and_clear(omni_page):
    driver = omni_page
    pad = pads(driver, "#classes")[0]
    page.draw(driver, pad, SHAPES["plus"])
    cell = "demo.state.classes[0][0]"
    bits = f"return Array.from(demo.cellBits({cell}) || [])"
    assert driver.execute_script(f"return {cell}.strokes.length") == 2
    driver.find_elements("css selector", "#classes .undo")[0].click()
    strokes = driver.execute_script(f"return {cell}.strokes")
    assert len(strokes) == 1 and strokes[0][0] == [50, 15]
    assert driver.execute_script(bits) == strokes_to_image(strokes).reshape(-1).tolist()
    driver.find_elements("css selector", "#classes .clear")[0].click()
    assert driver.execute_script(f"return {cell}.strokes.length") == 0
    assert driver.execute_script(bits) == []
    preview = driver.execute_script(
        "const c = document.querySelector('#classes .preview');"
        "return Array.from(c.getContext('2d').getImageData(0, 0, 28, 28).data)"
    )
    assert set(preview) == {255}  # an empty cell's model input: all background


def test_random_task_answers_as_the_grpc_client(omni_page, zoo_server):
    driver = omni_page
    driver.find_elements("css selector", "#classes .shots-plus")[1].click()  # class 2: 2 shots
    driver.find_element("id", "queries-plus").click()  # 2 queries
    seq = page.last_seq(driver)
    driver.find_element("id", "random-task").click()
    last = page.wait_answer(driver, seq)
    assert last["error"] is None
    sources = driver.execute_script(
        "const s = demo.state; const src = c => [c.source.character, c.source.drawing];"
        "return {support: s.classes.map(cs => cs.map(src)), queries: s.queries.map(src),"
        "truth: s.queries.map(c => c.truth)}"
    )
    # The page sent the shipped drawings of the characters it shows.
    data = json.loads(make_data.DATA_FILE.read_text())["characters"]

    def bits(character, drawing):
        return make_data.decode_bits(data[character]["drawings"][drawing])[..., None]

    support = [bits(*s) for cells in sources["support"] for s in cells]
    labels = [c for c, cells in enumerate(sources["support"]) for _ in cells]
    queries = [bits(*s) for s in sources["queries"]]
    request = last["request"]
    np.testing.assert_array_equal(images(request["support_images"]), np.stack(support))
    np.testing.assert_array_equal(images(request["query_images"]), np.stack(queries))
    assert request["support_labels"] == labels == [0, 1, 1, 2]
    # Held out: a query is a drawing of its class's character that is not in the support set.
    for (character, drawing), truth in zip(sources["queries"], sources["truth"]):
        assert [character, drawing] not in sources["support"][truth]
        assert character == sources["support"][truth][0][0]

    with Client(zoo_server.grpc_target) as client:
        expected = client.adapt_and_predict(
            OMNI,
            np.stack(support).astype(np.float32),
            np.int32(labels),
            np.stack(queries).astype(np.float32),
            inner_steps=last["steps"],
        )
    shown = np.asarray(last["outputs"]["probabilities"])
    np.testing.assert_array_equal(last["outputs"]["classes"], expected["classes"])
    np.testing.assert_allclose(shown, expected["probabilities"], rtol=0, atol=1e-5)
    bars = page.bars(driver)
    for q, query_bars in enumerate(bars):
        assert [b["probability"] for b in query_bars] == shown[q, :3].tolist()
        assert [b["top"] for b in query_bars].index(True) == int(np.argmax(shown[q, :3]))
    print(f"page vs gRPC client: max |dp| = {np.abs(shown - expected['probabilities']).max():.3g}")


def test_server_errors_are_shown_as_text(omni_page):
    driver = omni_page
    driver.find_element("id", "random-task").click()
    first = page.wait_answer(driver)
    assert not driver.find_element("id", "error").is_displayed()
    page.type_steps(driver, str(MAX_STEPS + 1))
    failed = page.wait_answer(driver, first["seq"])
    error = driver.find_element("id", "error")
    assert error.is_displayed()
    assert error.text == failed["error"]
    assert "HTTP 400" in error.text and f"inner_steps must be in [0, {MAX_STEPS}]" in error.text
    assert page.bars(driver) == [[]]
    page.type_steps(driver, "5")
    page.wait_answer(driver, failed["seq"])
    assert not error.is_displayed() and len(page.bars(driver)[0]) == 3


def test_sine_view_draws_the_curves_after_0_1_and_32_steps(browser, zoo_server):
    driver = browser
    page.open_demo(driver, zoo_server.rest_url, SINE)
    assert driver.find_element("id", "sine-view").is_displayed()
    assert not driver.find_element("id", "classify-view").is_displayed()
    from selenium.webdriver.common.action_chains import ActionChains

    plot = driver.find_element("id", "plot")
    # Plot pixels: x = -5 at 34, 5 at 446 (41.2 per unit); y = 5 at 34, -5 at 446.
    clicks = [(75, 240), (157, 158), (240, 323), (364, 199), (405, 240)]
    for x, y in clicks:
        ActionChains(driver).move_to_element_with_offset(plot, x - 240, y - 240).click().perform()
    script = "const s = demo.state.sine; return !s.pending && s.last && s.points.length === 5 && s"
    sine = page.wait_for(driver, script)
    expected_points = [[(x - 240) / 41.2, (240 - y) / 41.2] for x, y in clicks]
    np.testing.assert_allclose(sine["points"], expected_points, atol=0.03)
    assert sorted(sine["curves"], key=int) == ["0", "1", "32"]
    grid = np.linspace(-5, 5, 101, dtype=np.float32)[:, None]
    points = np.float32(sine["points"])
    with Client(zoo_server.grpc_target) as client:
        for steps in (0, 1, 32):
            expected = client.adapt_and_predict(
                SINE, points[:, :1], points[:, 1:], grid, inner_steps=steps
            )["predictions"][:, 0]
            np.testing.assert_allclose(sine["curves"][str(steps)], expected, rtol=0, atol=1e-5)
    # After 32 steps the curve passes near the points; before adapting it does not.
    after = np.interp(points[:, 0], grid[:, 0], sine["curves"]["32"])
    before = np.interp(points[:, 0], grid[:, 0], sine["curves"]["0"])
    assert np.abs(after - points[:, 1]).mean() < 0.5 * np.abs(before - points[:, 1]).mean()
    legend = driver.find_element("id", "legend").text
    assert "0 steps" in legend and "after 1 inner step" in legend and "32 inner steps" in legend
    before = sine["seq"]
    driver.find_element("id", "sine-undo").click()
    script = "const s = demo.state.sine; return !s.pending && s.last.seq > arguments[0]"
    page.wait_for(driver, script, before)
    assert len(driver.execute_script("return demo.state.sine.points")) == 4
    status = driver.find_element("id", "sine-status").text
    assert "4 points" in status and "32 steps" in status


def test_a_changed_query_reuses_the_adaptation(omni_page, zoo_server):
    driver = omni_page
    seq = page.last_seq(driver)
    driver.find_element("id", "random-task").click()
    first = page.wait_answer(driver, seq)
    assert first["error"] is None and first["reused"] is False
    seq = first["seq"]
    page.draw(driver, pads(driver, "#queries")[0], [[(24, 22), (78, 76)]])  # only the query
    again = page.wait_answer(driver, seq)
    assert again["reused"] is True
    assert "reused the adaptation: 50 inner steps not run again" in (
        driver.find_element("id", "status").text
    )
    request = again["request"]
    with Client(zoo_server.grpc_target) as client:
        expected = client.adapt_and_predict(
            OMNI,
            images(request["support_images"]).astype(np.float32),
            np.int32(request["support_labels"]),
            images(request["query_images"]).astype(np.float32),
            inner_steps=again["steps"],
        )
    np.testing.assert_array_equal(again["outputs"]["classes"], expected["classes"])
    np.testing.assert_allclose(
        again["outputs"]["probabilities"], expected["probabilities"], rtol=0, atol=1e-5
    )
    page.type_steps(driver, "12")  # the steps decide the adaptation: adapted again
    third = page.wait_answer(driver, again["seq"])
    assert third["reused"] is False and third["steps"] == 12
