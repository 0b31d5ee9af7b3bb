"""A running gateway with its admin listener (and so the console) for the console tests."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2

from tests.conftest import running
from tests.e2e.conftest import ADMIN_KEY, Site, make_site


@dataclass
class Console:
    site: Site
    base: str  # http://127.0.0.1:PORT


@asynccontextmanager
async def console_site(root: Path, monkeypatch: Any, **site_options: Any) -> AsyncIterator[Console]:
    monkeypatch.setenv("SECUREGATEWAY_ADMIN_KEY", ADMIN_KEY)
    site = make_site(root, admin=True, **site_options)
    text = site.config_path.read_text()
    base = text.split('[admin]\nlisten = "', 1)[1].split('"', 1)[0]
    async with running(site.app()):
        yield Console(site, base)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


async def signed_in(http: httpx2.AsyncClient, base: str) -> str:
    """Sign ``http`` in through the form; returns the session's CSRF token."""
    page = await http.get(f"{base}/console/signin")
    response = await http.post(f"{base}/console/signin", data={"csrf": csrf_of(page.text), "admin_key": ADMIN_KEY},
                               headers={"Origin": base})
    assert response.status_code == 303, response.text
    proposals = await http.get(f"{base}/console/proposals")
    assert proposals.status_code == 200
    return csrf_of(proposals.text)
