"""--model_config_file_poll_wait_seconds: a changed model config file is applied while serving."""

import time

from serving import model_config
from serving.model_manager import ModelManager
from serving.validation import Limits
from tests.serving.helpers import export, install

ONE = 'model_config_list {{ config {{ name: "omni" base_path: "{root}/omni" }} }}'
TWO = (
    'model_config_list {{ config {{ name: "omni" base_path: "{root}/omni" }} '
    'config {{ name: "sine" base_path: "{root}/sine" }} }}'
)


def _until(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_changed_config_file_is_applied_and_a_broken_one_changes_nothing(tmp_path):
    install(export("omni", 1), tmp_path / "omni", 1)
    install(export("sine", 1), tmp_path / "sine", 1)
    path = tmp_path / "models.config"
    path.write_text(ONE.format(root=tmp_path))
    config = model_config.read_config_file(str(path))
    manager = ModelManager(model_config.sources_from_config(config), Limits(), poll_seconds=0)
    manager.start()
    try:
        manager.watch_config_file(str(path), 0.1, config)
        assert manager.model_names() == ["omni"]
        path.write_text(TWO.format(root=tmp_path))
        _until(lambda: manager.model_names() == ["omni", "sine"])
        path.write_text("model_config_list { config { nme: 1 } }")
        time.sleep(0.5)
        assert manager.model_names() == ["omni", "sine"]
        path.write_text(ONE.format(root=tmp_path))
        _until(lambda: manager.model_names() == ["omni"])
    finally:
        manager.stop()
