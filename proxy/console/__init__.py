"""The review console: server-rendered HTML on the admin listener, no JavaScript at all.

Modules, one concept each::

    auth.py     sign-in with the admin key, session cookies, CSRF tokens, Host/Origin checks
    text.py     escaping for display: HTML-escaped, bidi and invisible characters as escapes
    pages.py    the pages (proposals, decisions, policy, tools) and the review actions (approve, reject, release)
    approvals.py  the Approvals page: held calls (ask_tools), approve once / deny, history
    templates/  Jinja2 templates (autoescaped)

``build_console(...)`` returns a Starlette app that ``proxy/admin/app.py`` mounts at ``/console``.
"""

from proxy.console.pages import build_console

__all__ = ["build_console"]
