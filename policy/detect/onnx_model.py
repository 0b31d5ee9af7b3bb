"""A :class:`~policy.detect.classifier.TextClassifier` backed by a local ONNX model.

For a sequence classifier exported to ONNX (for example a prompt-injection model the
operator downloaded) with its Hugging Face ``tokenizer.json``. Needs the ``ml`` extra:
``pip install 'securegateway[ml]'`` (onnxruntime, tokenizers); nothing is downloaded.

What the model must look like, checked once by :meth:`OnnxClassifier.load`:

* inputs named ``input_ids`` (required), ``attention_mask``, ``token_type_ids``, each
  int64 ``[batch, sequence]``;
* its first output is ``[batch, labels]`` logits (softmax; ``label`` picks the injection
  class, 1 by default) or ``[batch]`` / ``[batch, 1]``, one logit (sigmoid).

Inference runs on one CPU thread: deterministic, and the gateway shares its cores. A
model or tokenizer that cannot be loaded, or does not fit the above, raises
:class:`ClassifierLoadError` with a one-line reason naming the file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["INSTALL_HINT", "ClassifierLoadError", "OnnxClassifier"]

INSTALL_HINT = "pip install 'securegateway[ml]'"
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class ClassifierLoadError(Exception):
    """The configured classifier cannot be used; the message says why, in one line."""


@dataclass(frozen=True)
class OnnxClassifier:
    """An ONNX sequence classifier and its tokenizer, loaded once."""

    session: Any  # onnxruntime.InferenceSession
    tokenizer: Any  # tokenizers.Tokenizer
    inputs: tuple[str, ...]
    output: str
    label: int

    @classmethod
    def load(cls, model: Path, tokenizer: Path, *, label: int = 1, max_tokens: int = 512) -> OnnxClassifier:
        """Load and check ``model`` and ``tokenizer``; one trial score proves they fit together."""
        try:
            import numpy  # noqa: F401 -- onnxruntime's own dependency; checked for the hint
            import onnxruntime
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise ClassifierLoadError(
                f"the classifier needs onnxruntime and tokenizers ({exc}): {INSTALL_HINT}"
            ) from exc
        for what, path in (("model", model), ("tokenizer", tokenizer)):
            if not path.is_file():
                raise ClassifierLoadError(f"classifier {what} `{path}` does not exist")
        try:
            loaded = Tokenizer.from_file(str(tokenizer))
        except Exception as exc:
            raise ClassifierLoadError(f"classifier tokenizer `{tokenizer}` cannot be read: {_line(exc)}") from exc
        loaded.enable_truncation(max_length=max_tokens)
        loaded.no_padding()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            session = onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ClassifierLoadError(f"classifier model `{model}` cannot be loaded: {_line(exc)}") from exc
        names = tuple(item.name for item in session.get_inputs())
        unknown = [name for name in names if name not in _INPUTS]
        if unknown or "input_ids" not in names:
            raise ClassifierLoadError(
                f"classifier model `{model}` has inputs {', '.join(f'`{n}`' for n in names) or 'none'}; "
                f"expected `input_ids` and optionally `attention_mask`, `token_type_ids`"
            )
        outputs = session.get_outputs()
        if not outputs:
            raise ClassifierLoadError(f"classifier model `{model}` has no outputs")
        classifier = cls(session, loaded, names, outputs[0].name, label)
        try:
            classifier.score("a trial sentence")
        except Exception as exc:
            raise ClassifierLoadError(f"classifier model `{model}` does not run: {_line(exc)}") from exc
        return classifier

    def score(self, text: str) -> float:
        """The probability that ``text`` is an injection, per the model."""
        import numpy

        encoding = self.tokenizer.encode(text)
        feeds = {
            "input_ids": encoding.ids,
            "attention_mask": encoding.attention_mask,
            "token_type_ids": encoding.type_ids,
        }
        arrays = {name: numpy.asarray([feeds[name] or [0]], dtype=numpy.int64) for name in self.inputs}
        (raw,) = self.session.run([self.output], arrays)
        values = [float(x) for x in numpy.asarray(raw, dtype=numpy.float64).reshape(-1)]
        if len(values) == 1:
            return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, values[0]))))
        if not 0 <= self.label < len(values):
            raise ValueError(f"label {self.label} is outside the model's {len(values)} outputs")
        top = max(values)
        exps = [math.exp(v - top) for v in values]
        return exps[self.label] / sum(exps)


def _line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.strip().splitlines()[0][:200] if text.strip() else type(exc).__name__
