"""A bad configuration is one clear line naming the key, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.config import LineConfig, load_config
from controller.errors import ConfigError


def test_defaults_describe_the_simulated_line() -> None:
    cfg = LineConfig()
    assert cfg.plc.db_plc_to_vision == 100 and cfg.plc.db_vision_to_plc == 101
    assert cfg.camera.type == "stream" and cfg.inference.type == "ray"


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[plc]\nprot = 1\n", "plc.prot: Extra inputs are not permitted"),
        ("[plc]\nport = 'x'\n", "plc.port: Input should be a valid integer"),
        ("[plc]\nheartbeat_ms = 80\n", "plc.heartbeat_ms: Input should be less than or equal to 50"),
        ("[camera]\ntype = 'usb'\n", "camera: Input tag 'usb'"),
        ("[inference]\ntype = 'local'\nthreads = 0\n", "inference.local.threads"),
        ("[plc\n", "not valid TOML"),
    ],
)
def test_bad_config_names_the_problem(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "line.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        load_config(path)
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
