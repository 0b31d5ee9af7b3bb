"""A model-based detector, as an extra signal on top of the deterministic rules.

:class:`TextClassifier` is the seam: ``score(text) -> float``, the probability that
``text`` is a prompt injection, synchronous and deterministic (a local model, no network).
The gateway's implementation is :class:`policy.detect.onnx_model.OnnxClassifier` (the
``securegateway[ml]`` extra); tests and embedders may plug in any other.

This module decides *what* is scored and *what a score means*; when and under which
time budget the model runs is the proxy's business (:mod:`proxy.screen.classify`), because a
model call is slow enough to belong off the event loop.

* :func:`classifier_windows` -- the strings of a value worth scoring (at least
  ``min_chars``), cut into overlapping windows of ``window_chars`` so a payload planted
  at the end of a long result is seen, at most ``max_windows`` in document order;
* :func:`classifier_findings` -- a :class:`~policy.detect.finding.Finding`
  ``prompt_injection`` / ``classifier_injection`` (high) per string whose best window
  scores at least ``threshold``, the score in the excerpt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .finding import Finding
from .scan import value_strings

__all__ = [
    "CLASSIFIER_KIND",
    "UNAVAILABLE_KIND",
    "ClassifierSettings",
    "TextClassifier",
    "Window",
    "classifier_findings",
    "classifier_windows",
    "unavailable_finding",
]

CLASSIFIER_KIND = "classifier_injection"
UNAVAILABLE_KIND = "classifier_unavailable"


class TextClassifier(Protocol):
    """Scores text: the probability (0..1) that it is a prompt injection. Synchronous."""

    def score(self, text: str) -> float: ...


@dataclass(frozen=True)
class ClassifierSettings:
    """What is scored and how a score is read (``[detectors] classifier``, docs/detection.md)."""

    threshold: float = 0.9
    min_chars: int = 20
    window_chars: int = 2000
    overlap_chars: int = 200
    max_windows: int = 16


@dataclass(frozen=True, slots=True)
class Window:
    """One stretch of one string of a value: where it is, and the text to score."""

    path: str
    text: str


def classifier_windows(value: Any, root: str, settings: ClassifierSettings) -> list[Window]:
    """The windows of ``value``'s strings to score, in document order, at most ``max_windows``."""
    paths, texts = value_strings(value, root)
    step = max(1, settings.window_chars - settings.overlap_chars)
    windows: list[Window] = []
    for path, text in zip(paths, texts, strict=True):
        if len(text.strip()) < settings.min_chars:
            continue
        for start in range(0, max(1, len(text) - settings.overlap_chars), step):
            windows.append(Window(path, text[start : start + settings.window_chars]))
            if len(windows) >= settings.max_windows:
                return windows
    return windows


def classifier_findings(
    windows: Sequence[Window], scores: Sequence[float], settings: ClassifierSettings
) -> tuple[Finding, ...]:
    """One high ``classifier_injection`` finding per path whose best score reaches the threshold."""
    best: dict[str, float] = {}
    for window, score in zip(windows, scores, strict=True):
        best[window.path] = max(best.get(window.path, 0.0), score)
    return tuple(
        Finding(
            "prompt_injection",
            CLASSIFIER_KIND,
            path,
            f"classifier score {score:.2f} (threshold {settings.threshold:.2f})",
            "high",
        )
        for path, score in best.items()
        if score >= settings.threshold
    )


def unavailable_finding(root: str, why: str) -> Finding:
    """What ``on_error = "flag"`` reports when the classifier could not give a score."""
    return Finding("prompt_injection", UNAVAILABLE_KIND, root, f"classifier unavailable: {why}", "high")
