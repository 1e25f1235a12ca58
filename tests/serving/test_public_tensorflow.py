"""The project uses TensorFlow's public API only: no module imports its private `python` package."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Spelled apart, so that this file does not match itself.
PRIVATE = ("tensorflow" + ".python", "from tensorflow import" + " python")
FOLDERS = ("keras_reptile", "serving", "tests", "benchmarks", "experiments")


def test_no_file_imports_or_names_tensorflow_python():
    pattern = re.compile("|".join(rf"\b{re.escape(name)}\b" for name in PRIVATE))
    files = [ROOT / "absl_main.py"]
    for folder in FOLDERS:
        files += sorted((ROOT / folder).rglob("*.py"))
    assert len(files) > 50
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in files
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if pattern.search(line)
    ]
    assert not offenders, offenders
