"""The gradient-combination experiment: its ten runs, its CSV and its figure."""

import csv
import importlib.util
import os
import pathlib
import sys
import threading

import filelock
import pytest

from tests.conftest import OMNIGLOT_DIR, REPO_ROOT, needs_omniglot

_spec = importlib.util.spec_from_file_location(
    "gradient_combinations", REPO_ROOT / "experiments" / "gradient_combinations.py"
)
gc = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = gc  # dataclasses look their module up
_spec.loader.exec_module(gc)


def test_the_ten_combinations_are_the_papers():
    table = [
        (c.name, c.inner_iters, c.train_shots, c.meta_step, c.first_order) for c in gc.COMBINATIONS
    ]
    assert table == [
        ("g1", 1, 5, 0.25, False),
        ("g1+g2", 2, 10, 0.25, False),
        ("(g1+g2)/2", 2, 10, 0.125, False),
        ("g2", 2, 10, 0.25, True),
        ("g1+g2+g3", 3, 15, 0.25, False),
        ("(g1+g2+g3)/3", 3, 15, 0.08325, False),
        ("g3", 3, 15, 0.25, True),
        ("g4", 4, 20, 0.25, True),
        ("g1+g2+g3+g4", 4, 20, 0.25, False),
        ("(g1+g2+g3+g4)/4", 4, 20, 0.0625, False),
    ]
    assert len({c.slug for c in gc.COMBINATIONS}) == 10
    assert gc.BY_NAME["(g1+g2)/2"].slug == "mean_g1_plus_g2"


def test_each_run_is_the_official_command():
    r = gc.recipe(gc.BY_NAME["g2"], meta_iters=40000, eval_interval=2000, eval_tasks=250)
    assert (r.dataset, r.classes, r.train_shots, r.inner_batch, r.inner_iters) == (
        "omniglot", 5, 10, 25, 2,
    )  # fmt: skip
    assert (r.learning_rate, r.sgd, r.meta_batch, r.meta_step, r.meta_step_final) == (
        0.003, True, 1, 0.25, 0.0,
    )  # fmt: skip
    assert r.foml and r.foml_tail == 0 and r.seed == 0 and r.meta_iters == 40000
    assert not gc.recipe(gc.BY_NAME["g1+g2"], 40000, 2000, 250).foml
    p = gc.protocol(250)
    assert (p.shots, p.eval_iters, p.eval_batch, p.learning_rate) == (5, 5, 25, 0.003)
    assert not p.eval_train_classes
    r.validate()
    p.validate(r)


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"Unknown combinations.*Received: only=\['g5'\]"):
        gc.main(["--only=g5", f"--csv={tmp_path / 'c.csv'}"])
    with pytest.raises(ValueError, match="multiple of `eval_interval`"):
        gc.main(["--meta_iters=5", "--eval_interval=2", f"--csv={tmp_path / 'c.csv'}"])
    with pytest.raises(ValueError, match=r"Received: intra_op_threads=-1"):
        gc.main(["--intra_op_threads=-1", "--only=g1", f"--csv={tmp_path / 'c.csv'}"])
    with pytest.raises(ValueError, match="No curves to draw"):
        gc.main(["--plot_only", f"--csv={tmp_path / 'c.csv'}", f"--png={tmp_path / 'c.png'}"])


def test_grid_processes_update_the_csv_in_turn(tmp_path, monkeypatch):
    path = str(tmp_path / "c.csv")
    monkeypatch.setattr(gc, "plot", lambda *a: None)
    other = filelock.FileLock(path + ".lock")  # another process's lock on the CSV
    with other:
        update = threading.Thread(target=gc.add_curve, args=(path, "c.png", "g1", []))
        update.start()
        update.join(1.0)
        assert update.is_alive() and not os.path.exists(path)  # waits for its turn
    update.join(30)
    assert not update.is_alive() and gc.read_csv(path) == []


def _rows(path: pathlib.Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
@needs_omniglot
def test_runs_write_their_curves_resume_and_redraw(tmp_path, capsys):
    paths = [f"--csv={tmp_path / 'c.csv'}", f"--png={tmp_path / 'c.png'}"]
    args = [
        f"--data_dir={OMNIGLOT_DIR}", f"--runs_dir={tmp_path / 'runs'}", "--only=g2,g1",
        "--meta_iters=4", "--eval_interval=2", "--eval_tasks=4", *paths,
    ]  # fmt: skip
    assert gc.main(args) == 0
    rows = _rows(tmp_path / "c.csv")
    assert [(r["combination"], int(r["meta_iteration"])) for r in rows] == [
        ("g1", 0),
        ("g1", 2),
        ("g1", 4),
        ("g2", 0),
        ("g2", 2),
        ("g2", 4),
    ]  # fmt: skip  (the table's order, whatever the order run)
    assert list(rows[0]) == list(gc.COLUMNS)
    for r in rows:
        assert 0 <= float(r["test_accuracy"]) <= 1 and int(r["num_tasks"]) == 4
        assert 0 <= float(r["transductive_test_accuracy"]) <= 1
    # Both start from the same initialization, measured on the same tasks.
    assert rows[0]["test_accuracy"] == rows[3]["test_accuracy"]
    assert (tmp_path / "c.png").stat().st_size > 10_000
    capsys.readouterr()
    assert gc.main(args) == 0  # done runs are not run again
    assert capsys.readouterr().out.count("already, skipped") == 2
    (tmp_path / "c.png").unlink()
    assert gc.main(["--plot_only", *paths]) == 0  # the CSV alone redraws the figure
    assert (tmp_path / "c.png").is_file()
