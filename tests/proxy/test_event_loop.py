"""`securegateway run` picks its event loop: uvloop when installed, the standard loop on request."""

from __future__ import annotations

import importlib.util

import anyio
import pytest

from proxy.cli import EVENT_LOOP_ENV, event_loop_options


def test_uvloop_is_used_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(EVENT_LOOP_ENV, raising=False)
    assert event_loop_options() == {"use_uvloop": importlib.util.find_spec("uvloop") is not None}


@pytest.mark.parametrize("value", ["asyncio", " AsyncIO "])
def test_the_standard_loop_can_be_asked_for(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(EVENT_LOOP_ENV, value)
    assert event_loop_options() == {}


@pytest.mark.skipif(importlib.util.find_spec("uvloop") is None, reason="uvloop is not installed")
def test_the_chosen_options_run_a_uvloop_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(EVENT_LOOP_ENV, raising=False)

    async def loop_module() -> str:
        import asyncio

        return type(asyncio.get_running_loop()).__module__

    assert anyio.run(loop_module, backend_options=event_loop_options()).startswith("uvloop")


def test_the_environment_overrides_the_file_and_a_bad_value_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from proxy.errors import ConfigError

    monkeypatch.setenv(EVENT_LOOP_ENV, "asyncio")
    assert event_loop_options("uvloop") == {}
    monkeypatch.setenv(EVENT_LOOP_ENV, "trio")
    with pytest.raises(ConfigError, match="SECUREGATEWAY_EVENT_LOOP: must be one of auto, asyncio, uvloop"):
        event_loop_options("auto")
    monkeypatch.delenv(EVENT_LOOP_ENV)
    assert event_loop_options("asyncio") == {}
