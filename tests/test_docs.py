"""The docs' Python examples run as written, in order, from a folder holding the zoo."""

import contextlib
import io
import os
import pathlib
import re

import pytest

from serving.launcher import REPO_ROOT

DOCS = ("docs/python.md", "docs/savedmodel.md")


def python_blocks(path: str) -> list[str]:
    text = (pathlib.Path(REPO_ROOT) / path).read_text()
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


@pytest.mark.parametrize("doc", DOCS)
def test_every_python_example_runs(doc, tmp_path, monkeypatch):
    blocks = python_blocks(doc)
    assert blocks, f"{doc} has no python examples"
    (tmp_path / "saved_models").symlink_to(os.path.join(REPO_ROOT, "saved_models"))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, block in enumerate(blocks):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(block, f"{doc} example {i + 1}", "exec"), namespace)
        # A comment after a print says what it prints; check the ones that give an exact value
        # (one word, or a list after a colon), not descriptions or "e.g." samples.
        for line in block.splitlines():
            comment = re.search(r"print\(.*\)\s*#\s*(.*)$", line)
            if not comment:
                continue
            listed = re.search(r": (\[[0-9 ]+\])$", comment.group(1))
            value = listed.group(1) if listed else comment.group(1)
            if listed or " " not in value:
                assert value in out.getvalue(), (doc, i + 1, value, out.getvalue())
