"""The client library and CLI against the real server: PNGs, .npz, gRPC and REST, deadlines."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from keras_reptile.config import Protocol, Recipe
from keras_reptile.data.preprocessing import omniglot_bits
from keras_reptile.export import signatures as sig
from keras_reptile.export.model_card import Measurement, ModelCard
from keras_reptile.export.saved_model import export_saved_model
from keras_reptile.task_kind import REGRESSION
from serving.client import Client, ClientError, card_summary, load_image
from serving.launcher import REPO_ROOT, ServerProcess
from tests.export.helpers import MINI_RECIPE, make_card, make_module
from tests.serving.helpers import (
    WAYS,
    export,
    outputs,
    predict_request,
    sine_task,
    stubs,
    task,
)

pytestmark = pytest.mark.slow
MINI_PROTOCOL = Protocol(shots=1, eval_iters=2, eval_batch=5, learning_rate=0.001)


def _cli(*args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "serving.client", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _target(server, rest: bool) -> str:
    return f"127.0.0.1:{server.rest_port if rest else server.port}"


def _grpc(server, model, signature, inputs):
    api = stubs(server.grpc_target)
    try:
        return outputs(
            api.prediction.Predict(predict_request(model, signature, inputs), timeout=30)
        )
    finally:
        api.channel.close()


@pytest.mark.parametrize("rest", [False, True])
def test_library_adapt_and_predict(server, rest):
    inputs = task(4)
    with Client(_target(server, rest), rest=rest, timeout=30) as client:
        got = client.adapt_and_predict(
            "omni", inputs[sig.SUPPORT_IMAGES], inputs[sig.SUPPORT_LABELS], inputs[sig.QUERY_IMAGES]
        )
        smaller_batches = client.adapt_and_predict(
            "omni", *inputs.values(), inner_batch_size=3, transductive=True
        )
        sine = client.adapt_and_predict(
            "sine",
            *(sine_task()[k] for k in (sig.SUPPORT_INPUTS, sig.SUPPORT_TARGETS, sig.QUERY_INPUTS)),
        )
        with pytest.raises(ClientError) as e:
            client.adapt_and_predict("nope", *inputs.values())
    expected = _grpc(server, "omni", sig.ADAPT_AND_PREDICT, inputs)
    np.testing.assert_allclose(got[sig.LOGITS], expected[sig.LOGITS], rtol=1e-6)
    options = dict(inner_batch_size=np.int32(3), transductive=np.bool_(True))
    expected = _grpc(server, "omni", sig.ADAPT_AND_PREDICT, dict(inputs, **options))
    np.testing.assert_allclose(smaller_batches[sig.LOGITS], expected[sig.LOGITS], rtol=1e-6)
    assert sine[sig.PREDICTIONS].shape == (7, 1)
    assert e.value.code in ("NOT_FOUND", 404)


@pytest.mark.parametrize("rest", [False, True])
def test_library_model_card(server, rest):
    with Client(_target(server, rest), rest=rest, timeout=30) as client:
        cards = {
            "latest": client.model_card("omni"),
            "version 1": client.model_card("omni", version=1),
            "stable": client.model_card("omni", label="stable"),
            "canary": client.model_card("omni", label="canary"),
            "sine": client.model_card("sine"),
        }
        with pytest.raises(ClientError) as no_card:
            client.model_card("bare")
        with pytest.raises(ClientError) as no_model:
            client.model_card("nope")
    omni = {seed: ModelCard.read(export("omni", seed)) for seed in (1, 2)}
    assert cards == {
        "latest": omni[2],
        "version 1": omni[1],
        "stable": omni[1],
        "canary": omni[2],
        "sine": ModelCard.read(export("sine", 1)),
    }
    assert omni[1] != omni[2] and cards["sine"].task_kind == REGRESSION
    assert no_card.value.code == (404 if rest else "NOT_FOUND")
    assert no_card.value.message.startswith("Model bare version 1 has no model card")
    assert no_model.value.code == (404 if rest else "NOT_FOUND")


def _write_png(path, rng):
    """A 105x105 black-on-white drawing, like an Omniglot PNG."""
    pixels = np.ones((105, 105), bool)
    r, c = rng.integers(10, 80, 2)
    pixels[r : r + 20, c : c + 5] = False
    pixels[r : r + 5, c : c + 20] = False
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def test_cli_with_pngs_prepares_them_like_training_images(server, tmp_path):
    rng = np.random.default_rng(0)
    names = [f"character{i:02d}" for i in range(WAYS)]
    for name in names:
        for j in range(2):
            _write_png(tmp_path / "support" / name / f"{j}.png", rng)
    queries = [tmp_path / "query" / f"q{i}.png" for i in range(3)]
    for path in queries:
        _write_png(path, rng)

    result = _cli(
        "--target",
        server.grpc_target,
        "--model",
        "omni",
        "--support",
        str(tmp_path / "support"),
        "--query",
        *map(str, queries),
    )
    assert result.returncode == 0, result.stderr[-3000:]

    def bits(path):
        with Image.open(path) as image:
            return omniglot_bits(image).astype(np.float32)[..., None]

    support = sorted((tmp_path / "support").rglob("*.png"))
    inputs = {
        sig.SUPPORT_IMAGES: np.stack([bits(p) for p in support]),
        sig.SUPPORT_LABELS: np.asarray([names.index(p.parent.name) for p in support], np.int32),
        sig.QUERY_IMAGES: np.stack([bits(p) for p in queries]),
    }
    np.testing.assert_array_equal(
        inputs[sig.QUERY_IMAGES][0], load_image(str(queries[0]), (28, 28, 1))
    )
    expected = _grpc(server, "omni", sig.ADAPT_AND_PREDICT, inputs)
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3
    for line, path, cls in zip(lines, queries, expected[sig.CLASSES]):
        assert line.startswith(f"{path}: class {cls} '{names[cls]}' (p=")


def test_cli_with_npz_over_rest(server, tmp_path):
    inputs = task(5)
    np.savez(  # numpy's default dtypes: the client converts them, losslessly
        tmp_path / "support.npz",
        support_images=inputs[sig.SUPPORT_IMAGES].astype(np.float64),
        support_labels=inputs[sig.SUPPORT_LABELS].astype(np.int64),
    )
    np.savez(tmp_path / "query.npz", **{sig.QUERY_IMAGES: inputs[sig.QUERY_IMAGES]})
    result = _cli(
        "--target",
        f"127.0.0.1:{server.rest_port}",
        "--rest",
        "--model",
        "omni",
        "--version",
        "1",
        "--inner_steps",
        "4",
        "--inner_batch_size",
        "3",
        "--support",
        str(tmp_path / "support.npz"),
        "--query",
        str(tmp_path / "query.npz"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    api = stubs(server.grpc_target)
    request = predict_request(
        "omni",
        sig.ADAPT_AND_PREDICT,
        dict(inputs, inner_steps=np.int32(4), inner_batch_size=np.int32(3)),
        version=1,
    )
    classes = outputs(api.prediction.Predict(request, timeout=30))[sig.CLASSES]
    api.channel.close()
    lines = result.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == [f"query[{i}]" for i in range(WAYS)]
    assert [int(line.split("class ")[1].split()[0]) for line in lines] == classes.tolist()


@pytest.mark.parametrize("rest", [False, True])
def test_cli_show_card_prints_a_summary_without_a_task(server, rest):
    args = ["--target", _target(server, rest), "--model", "omni", "--label", "stable"]
    result = _cli(*args, "--show_card", *(["--rest"] if rest else []))
    assert result.returncode == 0, result.stderr[-3000:]
    card = ModelCard.read(export("omni", 1))
    assert result.stdout.splitlines() == [
        "name: test_omni",
        "ways: 5 (classification)",
        "meta-iterations: 0",
        "results:",
        *(f"  {m}" for m in card.results),
        "default protocol: 2-shot, 2 inner steps of batch 5 at learning rate 0.001, "
        "non-transductive",
        "to ask for a measured protocol (this client's flags):",
        "  2-shot, non-transductive: (the defaults)",
        "  2-shot, transductive: --transductive",
    ]
    assert "  test 2-shot transductive: 30.00 +- 2.00 %" in result.stdout.splitlines()


def test_card_summary_says_which_flags_ask_for_each_measured_protocol():
    default = Protocol(shots=1, eval_iters=50, eval_batch=5, learning_rate=0.001)
    five_shot = default.replace(shots=5, eval_batch=15)
    card = ModelCard(
        name="m",
        recipe=Recipe(dataset="miniimagenet", model="miniimagenet_cnn", classes=5, sgd=False),
        default_protocol=default,
        input_shape=(84, 84, 3),
        meta_iterations=7,
        results=(
            Measurement("test", default, "accuracy", 0.5, 0.01, 10, 7),
            Measurement("test", five_shot.replace(transductive=True), "accuracy", 0.6, 0.01, 10, 7),
        ),
    )
    lines = card_summary(card).splitlines()
    assert lines[-2:] == [
        "  1-shot, non-transductive: (the defaults)",
        "  5-shot, transductive: --inner_batch_size=15 --transductive",
    ]


def test_cli_classifies_a_miniimagenet_task_sent_as_84x84_pngs(tmp_path):
    module = make_module(MINI_RECIPE, MINI_PROTOCOL, seed=1)
    card = make_card("mini", module, MINI_RECIPE)
    version = export_saved_model(module, str(tmp_path / "mini"), card)
    rng = np.random.default_rng(0)
    names = [f"n0{i}" for i in range(5)]
    for name in names:
        colour = rng.integers(0, 256, 3)
        noise = rng.integers(-40, 40, (84, 84, 3))
        pixels = np.clip(colour + noise, 0, 255).astype(np.uint8)
        (tmp_path / "support" / name).mkdir(parents=True)
        Image.fromarray(pixels).save(tmp_path / "support" / name / "0.png")
    queries = sorted((tmp_path / "support").rglob("*.png"))  # the support images as queries
    with ServerProcess(["--model_name=mini", f"--model_base_path={tmp_path / 'mini'}"]) as server:
        result = _cli(
            "--target", server.grpc_target, "--model", "mini",
            "--support", str(tmp_path / "support"), "--query", *map(str, queries),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        inputs = {
            sig.SUPPORT_IMAGES: np.stack([load_image(str(p), (84, 84, 3)) for p in queries]),
            sig.SUPPORT_LABELS: np.arange(5, dtype=np.int32),
            sig.QUERY_IMAGES: np.stack([load_image(str(p), (84, 84, 3)) for p in queries]),
        }
        expected = _grpc(server, "mini", sig.ADAPT_AND_PREDICT, inputs)
    assert version.endswith("1")
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 5
    for line, path, cls in zip(lines, queries, expected[sig.CLASSES]):
        assert line.startswith(f"{path}: class {cls} '{names[cls]}' (p=")


def test_cli_needs_a_support_set_unless_it_shows_the_card(server):
    result = _cli("--target", server.grpc_target, "--model", "omni")
    assert result.returncode == 2
    assert "--support is required (unless --show_card or --enrollment)" in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "nope"], "error: NOT_FOUND: Servable not found for request: Latest(nope)"),
        (["--model", "omni", "--timeout", "0.000001"], "error: DEADLINE_EXCEEDED"),
        (
            ["--model", "bare", "--show_card"],
            "error: NOT_FOUND: Model bare version 1 has no model card",
        ),
    ],
)
def test_cli_errors_exit_non_zero_with_the_message(server, tmp_path, args, message):
    np.savez(tmp_path / "task.npz", **task())
    result = _cli("--target", server.grpc_target, *args, "--support", str(tmp_path / "task.npz"))
    assert result.returncode == 1 and message in result.stderr, result.stderr[-3000:]


@pytest.mark.parametrize("transductive", [False, True])
def test_few_shot_model_answers_as_the_server_does(server, transductive):
    from keras_reptile.few_shot import FewShotModel

    inputs = task(6, shots=3)
    model = FewShotModel(export("omni", 2))  # the shared server's latest "omni" version
    got = model.adapt_and_predict(*inputs.values(), transductive=transductive)
    served = _grpc(server, "omni", sig.ADAPT_AND_PREDICT, {
        **inputs, sig.TRANSDUCTIVE: np.asarray(transductive),
    })  # fmt: skip
    np.testing.assert_array_equal(got[sig.CLASSES], served[sig.CLASSES])
    np.testing.assert_allclose(got[sig.PROBABILITIES], served[sig.PROBABILITIES], atol=1e-6)


def test_adapt_once_then_predict_equals_adapt_and_predict(server):
    inputs = task(7, shots=2, queries=6)
    with Client(server.grpc_target, timeout=30) as client:
        adapted = client.adapt("omni", inputs[sig.SUPPORT_IMAGES], inputs[sig.SUPPORT_LABELS])
        assert adapted.version == 2  # pinned to the version that adapted it
        for transductive in (False, True):
            whole = client.adapt_and_predict("omni", *inputs.values(), transductive=transductive)
            part = adapted.predict(inputs[sig.QUERY_IMAGES], transductive=transductive)
            np.testing.assert_array_equal(part[sig.CLASSES], whole[sig.CLASSES])
            np.testing.assert_allclose(part[sig.PROBABILITIES], whole[sig.PROBABILITIES], atol=1e-6)


@pytest.mark.parametrize("rest", [False, True])
def test_adapt_once_for_regression_over_both_apis(server, rest):
    support, targets, queries = sine_task(1).values()
    with Client(_target(server, rest), rest=rest, timeout=30) as client:
        adapted = client.adapt("sine", support, targets)
        assert adapted.version == 1
        whole = client.adapt_and_predict("sine", support, targets, queries)
        part = adapted.predict(queries)
    np.testing.assert_allclose(part[sig.PREDICTIONS], whole[sig.PREDICTIONS], atol=1e-6)


def test_cli_enrolls_once_and_classifies_query_files_later(server, tmp_path):
    rng = np.random.default_rng(1)
    names = [f"c{i}" for i in range(WAYS)]
    for name in names:
        _write_png(tmp_path / "support" / name / "0.png", rng)
    queries = sorted((tmp_path / "support").rglob("*.png"))
    enrollment = tmp_path / "task.npz"
    target = ["--target", server.grpc_target, "--model", "omni"]
    saved = _cli(*target, "--support", str(tmp_path / "support"),
                 "--save_enrollment", str(enrollment))  # fmt: skip
    assert saved.returncode == 0, saved.stderr[-3000:]
    assert saved.stdout.startswith("enrolled 5 examples with omni version 2")
    later = _cli(*target, "--enrollment", str(enrollment), "--query", *map(str, queries))
    assert later.returncode == 0, later.stderr[-3000:]
    whole = _cli(*target, "--support", str(tmp_path / "support"), "--query", *map(str, queries))
    assert later.stdout == whole.stdout and len(later.stdout.splitlines()) == 5
    other = _cli("--target", server.grpc_target, "--model", "sine", "--enrollment", str(enrollment))
    assert other.returncode == 1 and "was adapted by model 'omni'" in other.stderr
