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


def test_no_classifier_by_default_and_a_classifier_table_is_parsed(tmp_path: Path) -> None:
    assert parse_config({}, tmp_path / "gateway.toml").detectors.classifier is None
    table = {"classifier": {"model": "models/m.onnx", "tokenizer": "/abs/tokenizer.json", "threshold": 0.8,
                            "budget_ms": 30, "channels": ["results"], "on_error": "flag"}}  # fmt: skip
    classifier = parse_config({"detectors": table}, tmp_path / "gateway.toml").detectors.classifier
    assert classifier is not None
    assert classifier.model == tmp_path / "models/m.onnx"  # relative to the config file
    assert classifier.tokenizer == Path("/abs/tokenizer.json")
    assert (classifier.threshold, classifier.budget_ms, classifier.channels, classifier.on_error) == (
        0.8, 30, ("results",), "flag",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("classifier", "where"),
    [
        ("model.onnx", "detectors.classifier: must be a table"),
        ({"tokenizer": "t.json"}, "detectors.classifier.model: is required"),
        ({"model": "m.onnx"}, "detectors.classifier.tokenizer: is required"),
        ({"model": "m", "tokenizer": "t", "threshold": 1.5}, "detectors.classifier.threshold"),
        ({"model": "m", "tokenizer": "t", "budget_ms": 0}, "detectors.classifier.budget_ms"),
        ({"model": "m", "tokenizer": "t", "channels": ["tools"]}, "detectors.classifier.channels"),
        ({"model": "m", "tokenizer": "t", "channels": []}, "detectors.classifier.channels"),
        ({"model": "m", "tokenizer": "t", "on_error": "allow"}, "detectors.classifier.on_error"),
        ({"model": "m", "tokenizer": "t", "url": "https://x"}, "detectors.classifier.url"),
    ],
)
def test_bad_classifier_settings_are_named(tmp_path: Path, classifier: object, where: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config({"detectors": {"classifier": classifier}}, tmp_path / "gateway.toml")
    assert where in str(error.value)
