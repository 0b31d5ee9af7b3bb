"""Errors raised by the gateway itself.

    GatewayError                 root; every error carries a stable ``code``
    ├── ConfigError              gateway.toml is missing, malformed or invalid (code ``config``)
    ├── IdentityError            a client presented no key or an unknown one (code ``unauthenticated``)
    └── UpstreamError            an upstream could not be reached or broke mid-call (code ``upstream``)

Messages are one line, lower-case, with user input in backticks. Policy denials
are not errors: they are decisions (see ``policy.Decision``).
"""

from __future__ import annotations


class GatewayError(Exception):
    """Root of the gateway's own errors."""

    code = "gateway_error"


class ConfigError(GatewayError):
    """gateway.toml could not be turned into a configuration; lists every problem found."""

    code = "config"

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class IdentityError(GatewayError):
    """The connecting client has no valid model key."""

    code = "unauthenticated"


class UpstreamError(GatewayError):
    """An upstream server is unavailable or failed while serving a request."""

    code = "upstream"
