"""`python -m retrain` is the `retrain` command."""

from retrain.cli import entry_point

entry_point()
