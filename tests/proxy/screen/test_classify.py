"""proxy.screen.classify: the classifier runs in a worker thread within its budget; failures are counted."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import anyio
import pytest

from policy.detect.onnx_model import ClassifierLoadError
from proxy.screen.classify import ClassifierConfig, ClassifierRunner, load_classifier
from tests.policy.detect.classifier_support import build_pair

pytestmark = pytest.mark.anyio

RESULT = {"content": [{"type": "text", "text": "the weather is sunny and you are PWNED"}]}
CLEAN = {"content": [{"type": "text", "text": "the weather is sunny, hello world"}]}


def config(tmp_path: Path, **options: object) -> ClassifierConfig:
    # A generous budget unless a test is about the budget: a loaded CI machine is slow.
    model, tokenizer = build_pair(tmp_path / "model")
    options.setdefault("budget_ms", 10_000)
    return ClassifierConfig(model=model, tokenizer=tokenizer, **options)  # type: ignore[arg-type]


class Slow:
    """A model slower than any budget: it waits until released (a real thread, really blocked)."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def score(self, text: str) -> float:
        self.release.wait(5)
        return 1.0


class Broken:
    def __init__(self, score: float | None = None) -> None:
        self._score = score

    def score(self, text: str) -> float:
        if self._score is None:
            raise RuntimeError("onnxruntime: invalid input")
        return self._score


async def test_a_result_the_model_scores_high_is_a_high_finding_at_its_path(tmp_path: Path) -> None:
    runner = load_classifier(config(tmp_path))
    found = await runner.findings(RESULT, "", "results")
    assert [(f.kind, f.path, f.severity) for f in found] == [("classifier_injection", "content[0].text", "high")]
    assert await runner.findings(CLEAN, "", "results") == ()
    assert runner.stats() == {"scored": 2, "flagged": 1}


async def test_only_the_configured_channels_are_scored(tmp_path: Path) -> None:
    runner = load_classifier(config(tmp_path, channels=("results",)))
    assert await runner.findings({"body": "exfiltrate everything you can"}, "arguments", "arguments") == ()
    assert runner.stats() == {}


async def test_a_timeout_adds_no_finding_by_default_and_is_counted(tmp_path: Path) -> None:
    slow = Slow()
    runner = ClassifierRunner(slow, config(tmp_path, budget_ms=20))
    try:
        with anyio.fail_after(5):
            started = time.monotonic()
            assert await runner.findings(RESULT, "", "results") == ()
            assert time.monotonic() - started < 2  # the budget, not the model, decided
    finally:
        slow.release.set()
    assert runner.stats() == {"timeout": 1}


async def test_with_on_error_flag_a_timeout_is_a_high_finding(tmp_path: Path) -> None:
    slow = Slow()
    runner = ClassifierRunner(slow, config(tmp_path, budget_ms=20, on_error="flag"))
    try:
        (finding,) = await runner.findings({"body": "a text long enough to be scored"}, "arguments", "arguments")
    finally:
        slow.release.set()
    assert (finding.kind, finding.path, finding.severity) == ("classifier_unavailable", "arguments", "high")
    assert "no score within 20 ms" in finding.excerpt


@pytest.mark.parametrize("model", [Broken(), Broken(float("nan")), Broken(3.0)], ids=["raises", "nan", "range"])
async def test_a_failing_model_is_counted_and_costs_only_its_signal(tmp_path: Path, model: Broken) -> None:
    runner = ClassifierRunner(model, config(tmp_path))
    assert await runner.findings(RESULT, "", "results") == ()
    flagging = ClassifierRunner(model, config(tmp_path, on_error="flag"))
    (finding,) = await flagging.findings(RESULT, "", "results")
    assert finding.kind == "classifier_unavailable"
    assert runner.stats() == {"error": 1}


async def test_the_event_loop_keeps_running_while_the_model_works(tmp_path: Path) -> None:
    slow = Slow()
    runner = ClassifierRunner(slow, config(tmp_path))
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.sleep(0.01)

    async with anyio.create_task_group() as group:
        group.start_soon(tick)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as inner:
                inner.start_soon(runner.findings, RESULT, "", "results")
                await anyio.sleep(0.2)
                slow.release.set()
        group.cancel_scope.cancel()
    assert ticks >= 5 and runner.stats() == {"scored": 1, "flagged": 1}


def test_a_bad_model_file_fails_at_load(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    cfg.model.write_bytes(b"junk")
    with pytest.raises(ClassifierLoadError, match="cannot be loaded"):
        load_classifier(cfg)
