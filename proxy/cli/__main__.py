"""`python -m proxy.cli`."""

import gc

gc.disable()  # from the first import on: see proxy.cli.console (a run turns it back on once built)

from proxy.cli import console  # noqa: E402

console()
