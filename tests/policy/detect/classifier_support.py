"""A tiny ONNX "injection classifier" and its tokenizer, built on the spot (never downloaded).

The model scores a text by its words: each token id looks up a pair of logits, and the
text's logits are the per-class maximum over its tokens, so one flagged word anywhere
makes the softmax of class 1 ~1.0 and a text without one scores ~0.0.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
tokenizers = pytest.importorskip("tokenizers")

from onnx import TensorProto, helper  # noqa: E402

WORDS = ("[UNK]", "the", "weather", "is", "sunny", "hello", "world", "report", "pwned", "exfiltrate", "done", "ok")
FLAGGED = ("pwned", "exfiltrate")


def build_tokenizer(path: Path, words: Sequence[str] = WORDS) -> Path:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({word: index for index, word in enumerate(words)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(path))
    return path


def build_model(
    path: Path,
    *,
    words: Sequence[str] = WORDS,
    flagged: Sequence[str] = FLAGGED,
    inputs: Sequence[str] = ("input_ids", "attention_mask"),
    single_logit: bool = False,
) -> Path:
    width = 1 if single_logit else 2  # one logit (sigmoid) or a pair (softmax)
    table: list[float] = []
    for word in words:
        if single_logit:
            table.append(10.0 if word in flagged else -10.0)
        else:
            table += [-10.0, 10.0] if word in flagged else [0.0, -10.0]
    weights = helper.make_tensor("table", TensorProto.FLOAT, [len(words), width], table)
    nodes = [
        helper.make_node("Gather", ["table", inputs[0]], ["per_token"], axis=0),
        helper.make_node("ReduceMax", ["per_token"], ["logits"], axes=[1], keepdims=0),
    ]
    out_shape: list[object] = ["batch", width]
    graph = helper.make_graph(
        nodes,
        "tiny-injection-classifier",
        [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"]) for name in inputs],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, out_shape)],
        initializer=[weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def build_pair(directory: Path, **options: object) -> tuple[Path, Path]:
    """``(model.onnx, tokenizer.json)`` in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    words = options.pop("words", WORDS)
    model = build_model(directory / "model.onnx", words=words, **options)  # type: ignore[arg-type]
    return model, build_tokenizer(directory / "tokenizer.json", words)  # type: ignore[arg-type]
