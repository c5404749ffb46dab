"""`python -m retrain` is the `retrain` command."""

from retrain.cli import entry_point

if __name__ == "__main__":
    entry_point()
