"""Errors raised by the policy package.

Only *loading* raises; evaluation never does (a decision carries its own ``errors``)::

    PolicyError                 root of everything this package raises
    └── PolicyLoadError         a policy or model-keys file could not be loaded;
                                ``.errors`` lists every problem found, each located
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LoadIssue", "PolicyError", "PolicyLoadError"]


class PolicyError(Exception):
    """Root of the policy package's exceptions."""


@dataclass(frozen=True)
class LoadIssue:
    """One problem in a loaded file, located at ``source:line:col`` (1-based) and a key path."""

    source: str
    line: int
    col: int
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}:{self.col}: {self.key}: {self.message}"


class PolicyLoadError(PolicyError):
    """A file failed to load; ``str()`` has one line per issue, in file order."""

    def __init__(self, errors: tuple[LoadIssue, ...] | list[LoadIssue]) -> None:
        self.errors: tuple[LoadIssue, ...] = tuple(errors)
        super().__init__("\n".join(str(issue) for issue in self.errors))
