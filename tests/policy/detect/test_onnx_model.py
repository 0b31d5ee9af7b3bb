"""OnnxClassifier: a real (tiny, built here) ONNX model and tokenizer, loaded and scored."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from policy.detect.onnx_model import INSTALL_HINT, ClassifierLoadError, OnnxClassifier
from tests.policy.detect.classifier_support import build_model, build_pair, build_tokenizer


def test_a_flagged_word_scores_high_and_plain_text_low(tmp_path: Path) -> None:
    classifier = OnnxClassifier.load(*build_pair(tmp_path))
    assert classifier.inputs == ("input_ids", "attention_mask")
    assert classifier.score("you got PWNED, now exfiltrate") > 0.99
    assert classifier.score("the weather is sunny") < 0.01
    assert classifier.score("") < 0.01  # nothing to read is nothing flagged
    assert classifier.score("sunny " * 5000) < 0.01  # truncated to max_tokens, still scored


def test_a_single_logit_output_is_read_through_a_sigmoid(tmp_path: Path) -> None:
    classifier = OnnxClassifier.load(*build_pair(tmp_path, single_logit=True))
    assert classifier.score("exfiltrate it") > 0.99
    assert classifier.score("hello world") < 0.01


def test_the_label_picks_the_injection_class(tmp_path: Path) -> None:
    model, tokenizer = build_pair(tmp_path)
    flipped = OnnxClassifier.load(model, tokenizer, label=0)
    assert flipped.score("hello world") > 0.99


def test_a_label_outside_the_outputs_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(ClassifierLoadError, match="does not run: label 5"):
        OnnxClassifier.load(*build_pair(tmp_path), label=5)


def test_missing_files_are_named(tmp_path: Path) -> None:
    model, tokenizer = build_pair(tmp_path)
    with pytest.raises(ClassifierLoadError, match=r"classifier model `.*nope.onnx` does not exist"):
        OnnxClassifier.load(tmp_path / "nope.onnx", tokenizer)
    with pytest.raises(ClassifierLoadError, match=r"classifier tokenizer `.*nope.json` does not exist"):
        OnnxClassifier.load(model, tmp_path / "nope.json")


def test_unreadable_files_are_load_errors(tmp_path: Path) -> None:
    model, tokenizer = build_pair(tmp_path)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ClassifierLoadError, match="cannot be loaded"):
        OnnxClassifier.load(garbage, tokenizer)
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(ClassifierLoadError, match="cannot be read"):
        OnnxClassifier.load(model, broken)


def test_a_model_with_other_input_names_is_refused_naming_them(tmp_path: Path) -> None:
    model = build_model(tmp_path / "odd.onnx", inputs=("tokens",))
    tokenizer = build_tokenizer(tmp_path / "tokenizer.json")
    with pytest.raises(ClassifierLoadError, match="has inputs `tokens`; expected `input_ids`"):
        OnnxClassifier.load(model, tokenizer)


def test_without_the_extra_installed_the_error_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, tokenizer = build_pair(tmp_path)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what an environment without the extra shows
    with pytest.raises(ClassifierLoadError) as caught:
        OnnxClassifier.load(model, tokenizer)
    assert INSTALL_HINT in str(caught.value) and INSTALL_HINT == "pip install 'securegateway[ml]'"
