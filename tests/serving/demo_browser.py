"""Headless Chromium driving the demo page (tests, and the README's screenshot).

Needs Debian's `chromium` and `chromium-driver` and the `selenium` package; `browser_missing()`
says what is absent. As a script it makes the screenshot of a random task answered:

    python -m tests.serving.demo_browser docs/figures/demo.png
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence

CHROMIUM_ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
CHROMIUM, CHROMEDRIVER = "chromium", "chromedriver"


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None if they can."""
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (pip install -e '.[test]')"
    for program in (CHROMIUM, CHROMEDRIVER):
        if shutil.which(program) is None:
            return f"{program} not found (apt-get install chromium chromium-driver)"
    return None


@contextlib.contextmanager
def chromium(width: int = 1100, height: int = 900) -> Iterator:
    """A headless Chromium under chromedriver, with a fresh profile, quit on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="demo-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which(CHROMIUM)
    for arg in (*CHROMIUM_ARGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def open_demo(driver, rest_url: str, model: str | None = None, timeout: float = 30.0) -> None:
    """Loads the page (optionally `?model=`) and waits until it has listed the models."""
    driver.get(f"{rest_url}/demo/" + (f"?model={model}" if model else ""))
    script = "return window.demo !== undefined && window.demo.state.model !== null"
    wait_for(driver, script, timeout=timeout)


def wait_for(driver, script: str, *args, timeout: float = 60.0):
    """Polls `script` (JavaScript returning a value, given `args` as `arguments`) until it is
    truthy; returns the value."""
    deadline = time.monotonic() + timeout
    while True:
        value = driver.execute_script(script, *args)
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"Still false after {timeout} s: {script}")
        time.sleep(0.1)


def wait_answer(driver, after_seq: int = 0, timeout: float = 120.0) -> dict:
    """Waits until the page has answered a request newer than `after_seq` and is idle; returns
    `demo.state.last` (request, outputs, latencyMs, steps, error)."""
    script = (
        "const s = demo.state; "
        "return !s.pending && s.last && s.last.seq > arguments[0] && s.last.seq === s.seq && s.last"
    )
    return wait_for(driver, script, after_seq, timeout=timeout)


def wait_idle(driver, timeout: float = 60.0) -> None:
    """Waits until no request of the classification view is scheduled or running."""
    wait_for(driver, "return !demo.state.pending", timeout=timeout)


def last_seq(driver) -> int:
    return driver.execute_script("return demo.state.last ? demo.state.last.seq : 0")


def draw(
    driver, pad, strokes: Sequence[Sequence[tuple[int, int]]], step: int = 6, pointer: str = "mouse"
) -> None:
    """Draws `strokes` with the mouse (or a finger: `pointer="touch"`): points in the pad's
    pixels from its top-left corner, joined by moves of at most `step` pixels (one pointermove
    each), as a hand would."""
    from selenium.webdriver.common.actions import interaction
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput

    kind = {"mouse": interaction.POINTER_MOUSE, "touch": interaction.POINTER_TOUCH}[pointer]
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", pad)
    # Offsets are from the element's centre, border included (the pad's border is 1 pixel).
    centre_x, centre_y = pad.size["width"] / 2 - 1, pad.size["height"] / 2 - 1
    for stroke in strokes:
        builder = ActionBuilder(driver, mouse=PointerInput(kind, pointer), duration=0)
        actions = builder.pointer_action
        (x, y), rest = stroke[0], stroke[1:]
        actions.move_to(pad, round(x - centre_x), round(y - centre_y)).pointer_down()
        for x2, y2 in rest:
            n = max(1, int(max(abs(x2 - x), abs(y2 - y)) // step))
            for k in range(1, n + 1):
                xk, yk = x + (x2 - x) * k / n, y + (y2 - y) * k / n
                actions.move_to(pad, round(xk - centre_x), round(yk - centre_y))
            x, y = x2, y2
        actions.pointer_up()
        builder.perform()


def type_steps(driver, text: str) -> None:
    """Selects the inner steps field's text and types `text` over it."""
    from selenium.webdriver.common.keys import Keys

    driver.find_element("id", "steps").send_keys(Keys.CONTROL, "a", Keys.NULL, text)


def bars(driver) -> list[list[dict]]:
    """Each query's bars as the page shows them: class, probability, whether highlighted."""
    return driver.execute_script(
        """
        return Array.from(document.querySelectorAll('#queries .answer')).map(a =>
          Array.from(a.querySelectorAll('.bar-row')).map(r => ({
            cls: Number(r.dataset.class), probability: Number(r.dataset.probability),
            top: r.classList.contains('top'), text: r.textContent})));
        """
    )


def screenshot(path: str) -> None:
    """Serves saved_models/, answers a random 3-way 2-shot task with 2 queries in the page, and
    saves a screenshot."""
    from serving.launcher import ServerProcess

    with ServerProcess(["--file_system_poll_wait_seconds=0"]) as server:
        with chromium(1100, 820) as driver:
            open_demo(driver, server.rest_url, "omniglot_5w")
            for row in range(3):  # 2 drawings per class (each click lays the rows out anew)
                driver.find_elements("css selector", "#classes .shots-plus")[row].click()
            driver.find_element("id", "queries-plus").click()  # 2 queries
            wait_idle(driver)
            seq = last_seq(driver)
            driver.find_element("id", "random-task").click()
            wait_answer(driver, seq)
            driver.save_screenshot(path)
    print(f"wrote {path}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Screenshot of the demo page.")
    parser.add_argument("output", help="PNG file to write")
    args = parser.parse_args(argv)
    reason = browser_missing()
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 1
    screenshot(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
