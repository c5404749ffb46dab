"""Errors a person can fix: bad flags, bad folders. The CLI prints them as one line, exit code 2."""


class RetrainError(Exception):
    """A problem with the user's input or environment, not a bug in retrain."""
