"""`python -m serve` is the `serve` command."""

from serve.cli import entry_point

entry_point()
