"""Detectors: injection phrasing, hidden Unicode, secrets, poisoned tool definitions.

One concept per module:

* :mod:`.normalize` -- fold text (case, NFKC, confusables, invisibles, leetspeak) first;
* :mod:`.injection` -- injection rules, anchored by one Aho-Corasick automaton;
* :mod:`.unicode` -- hidden-Unicode smuggling vs legitimate uses; :func:`strip_hidden`;
* :mod:`.secrets` -- credentials in free text; :func:`mask_secrets`;
* :mod:`.literal` -- rarest-character literal search the secret patterns use;
* :mod:`.anchors` -- one automaton pass for both detectors' anchors over ASCII text;
* :mod:`.strings` -- the strings of a JSON value: the general walk and the fast one;
* :mod:`.scan` -- :func:`scan_value` over any JSON value (the hot path), its prescreen;
* :mod:`.memo` -- findings of large strings remembered by content (scanned once);
* :mod:`.tooldefs` -- :func:`scan_definition` for listed tools, prompts and templates;
* :mod:`.finding` -- :class:`Finding` and :func:`describe_findings`.

Synchronous, deterministic and pure like the rest of ``policy``; nothing here raises for
any input value.
"""

from .finding import Finding, describe_findings
from .scan import scan_text, scan_value
from .secrets import SECRET_KINDS, SecretHit, find_secrets, mask_secrets
from .tooldefs import poisoned, scan_definition
from .unicode import strip_hidden

__all__ = [
    "SECRET_KINDS",
    "Finding",
    "SecretHit",
    "describe_findings",
    "find_secrets",
    "mask_secrets",
    "poisoned",
    "scan_definition",
    "scan_text",
    "scan_value",
    "strip_hidden",
]
