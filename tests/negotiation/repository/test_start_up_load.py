"""Loading at start-up parses the live policy once when the head archive holds the same bytes,
and still refuses an archive that differs from its contract."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import negotiation.repository.history as history
import negotiation.repository.repository as repository
from negotiation.errors import PolicyTamperedError
from tests.negotiation.repository.support import Env


def counting(monkeypatch: Any) -> list[str]:
    parsed: list[str] = []
    for module in (history, repository):
        real = module.load_policy_text

        def spy(text: str, source: str = "<string>", *, _real: Any = real, **kw: Any) -> Any:
            parsed.append(source)
            return _real(text, source, **kw)

        monkeypatch.setattr(module, "load_policy_text", spy)
    return parsed


def test_a_restart_parses_the_live_policy_once(tmp_path: Path, monkeypatch: Any) -> None:
    env = Env(tmp_path)
    first = env.repo().load()  # records v1 and archives the live bytes
    parsed = counting(monkeypatch)
    again = env.repo().load()  # a fresh process: live file and head archive hold the same bytes
    assert again.version == first.version and again.policy.digest == first.policy.digest
    assert parsed == [str(env.live)]


def test_an_archive_altered_on_disk_is_still_refused(tmp_path: Path) -> None:
    env = Env(tmp_path)
    env.repo().load()
    archive = next((env.state / "policies").iterdir())
    archive.write_text(archive.read_text().replace("fs.read", "fs.write"))
    with pytest.raises(PolicyTamperedError, match="hashes to"):
        env.repo().load()
