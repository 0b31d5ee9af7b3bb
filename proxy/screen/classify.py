"""Running the optional classifier off the event loop, within a time budget.

``[detectors] classifier`` names a local model (docs/detection.md). The model call is
synchronous and may take tens of milliseconds, so :class:`ClassifierRunner` runs it in a
worker thread (``anyio.to_thread.run_sync``) under ``anyio.move_on_after(budget_ms)``,
one call at a time (a :class:`anyio.CapacityLimiter` of one: a slow model backs calls
up into timeouts instead of piling up threads).

A timeout or a model failure is counted (:attr:`ClassifierRunner.counts`) and logged,
and then, by default (``on_error = "ignore"``), adds no finding. That is not a fail-open
of enforcement: the classifier is an *extra* signal on top of the deterministic
detectors, which have already scanned the same text and decided on their own; losing
the extra signal leaves exactly the protection a gateway without a classifier has. An
operator who wants the classifier to be load-bearing sets ``on_error = "flag"``: a
missing score is then a high ``classifier_unavailable`` finding (arguments deny, results
are flagged and taint the session).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import structlog

from policy.detect.classifier import (
    ClassifierSettings,
    TextClassifier,
    Window,
    classifier_findings,
    classifier_windows,
    unavailable_finding,
)
from policy.detect.finding import Finding

log = structlog.get_logger("securegateway.classify")

__all__ = ["CHANNELS", "ON_ERROR", "ClassifierConfig", "ClassifierRunner", "load_classifier"]

CHANNELS = ("results", "arguments")
ON_ERROR = ("ignore", "flag")


@dataclass(frozen=True)
class ClassifierConfig:
    """``[detectors] classifier = { ... }``."""

    model: Path
    tokenizer: Path
    threshold: float = 0.9
    budget_ms: float = 50.0
    channels: tuple[str, ...] = CHANNELS
    on_error: str = "ignore"
    label: int = 1
    max_tokens: int = 512
    max_windows: int = 16
    settings: ClassifierSettings = field(default_factory=ClassifierSettings)


def load_classifier(config: ClassifierConfig) -> ClassifierRunner:
    """Load the configured model once, at start-up; raises ``ClassifierLoadError`` with the reason."""
    from policy.detect.onnx_model import OnnxClassifier

    model = OnnxClassifier.load(config.model, config.tokenizer, label=config.label, max_tokens=config.max_tokens)
    log.info("classifier loaded", model=str(config.model), inputs=list(model.inputs), channels=list(config.channels))
    return ClassifierRunner(model, config)


class ClassifierRunner:
    """Scores payloads with a :class:`TextClassifier` in a worker thread, within the budget."""

    def __init__(self, model: TextClassifier, config: ClassifierConfig, *, clock: Callable[[], float] = time.monotonic):
        self._model = model
        self._config = config
        self._settings = ClassifierSettings(
            threshold=config.threshold, min_chars=config.settings.min_chars,
            window_chars=config.settings.window_chars, overlap_chars=config.settings.overlap_chars,
            max_windows=config.max_windows,
        )  # fmt: skip
        self._limiter = anyio.CapacityLimiter(1)
        self._clock = clock
        self.counts: Counter[str] = Counter()  # scored, flagged, timeout, error

    @property
    def config(self) -> ClassifierConfig:
        return self._config

    def covers(self, channel: str) -> bool:
        return channel in self._config.channels

    async def findings(self, value: Any, root: str, channel: str) -> tuple[Finding, ...]:
        """Classifier findings for ``value`` on ``channel``; never raises (see the module docstring)."""
        if channel not in self._config.channels:
            return ()
        windows = classifier_windows(value, root, self._settings)
        if not windows:
            return ()
        deadline = self._clock() + self._config.budget_ms / 1000
        scores: list[float] | None = None
        try:
            with anyio.move_on_after(self._config.budget_ms / 1000):
                scores = await anyio.to_thread.run_sync(
                    self._score_all, windows, deadline, limiter=self._limiter, abandon_on_cancel=True
                )
        except Exception as exc:  # a broken model costs its signal, never the call (module docstring)
            why = f"{type(exc).__name__}: {str(exc)[:160]}"
            self.counts["error"] += 1
            log.warning("classifier failed", channel=channel, error=why, on_error=self._config.on_error)
            return self._unavailable(root, why)
        if scores is None:
            self.counts["timeout"] += 1
            log.warning("classifier timed out", channel=channel, budget_ms=self._config.budget_ms,
                        windows=len(windows), on_error=self._config.on_error)  # fmt: skip
            return self._unavailable(root, f"no score within {self._config.budget_ms:g} ms")
        self.counts["scored"] += 1
        found = classifier_findings(windows[: len(scores)], scores, self._settings)
        if found:
            self.counts["flagged"] += 1
            log.warning("classifier flagged", channel=channel, paths=[f.path for f in found])
        return found

    def _unavailable(self, root: str, why: str) -> tuple[Finding, ...]:
        return (unavailable_finding(root, why),) if self._config.on_error == "flag" else ()

    def _score_all(self, windows: Sequence[Window], deadline: float) -> list[float]:
        """Worker thread: score windows in order, stopping at the deadline (the rest unscored)."""
        scores: list[float] = []
        for window in windows:
            if scores and self._clock() > deadline:
                break
            score = float(self._model.score(window.text))
            if score != score or not 0.0 <= score <= 1.0:  # NaN or out of range: the model is broken
                raise ValueError(f"score {score!r} is not a probability")
            scores.append(score)
        return scores

    def stats(self) -> Mapping[str, int]:
        return dict(self.counts)
