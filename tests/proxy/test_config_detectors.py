"""proxy.config [detectors]: defaults are safe, bad values are named by key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import DetectorsConfig, parse_config
from proxy.errors import ConfigError


def test_defaults_quarantine_pin_and_taint(tmp_path: Path) -> None:
    config = parse_config({}, tmp_path / "gateway.toml")
    assert config.detectors == DetectorsConfig()
    assert (config.detectors.tool_scan, config.detectors.tool_pinning, config.detectors.taint) == (
        "quarantine", "tofu", True,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("table", "where"),
    [
        ({"tool_scan": "maybe"}, "detectors.tool_scan"),
        ({"tool_pinning": 3}, "detectors.tool_pinning"),
        ({"taint_window_s": -1}, "detectors.taint_window_s"),
        ({"sink_tools": "files.*"}, "detectors.sink_tools"),
        ({"surprise": True}, "detectors"),
    ],
)
def test_bad_values_are_named(tmp_path: Path, table: dict[str, object], where: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config({"detectors": table}, tmp_path / "gateway.toml")
    assert where in str(error.value)
