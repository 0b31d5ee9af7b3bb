"""`python -m proxy.cli`."""

from proxy.cli import console

console()
