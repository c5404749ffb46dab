"""The model server's repository side: which models and versions exist, which are served, and
the backbones their heads share (see DESIGN.md, "The next stage")."""

import re

from serve.text import printable

MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""A model's name: a folder under --models_dir and a path segment of /v1/models/<name> (TF Serving's)."""

LATEST_LINK = "latest"
"""retrain's link to its newest export, beside the model folders; never a model's name."""


def model_name_problem(name: str, where: str = "--model_name") -> str | None:
    """Why `name` cannot name a model (a folder, a URL path segment, not the `latest` link), or None."""
    if MODEL_NAME.fullmatch(name) and name != LATEST_LINK:
        return None
    return (
        f"{where} {printable(name)!r} is not a model name: use letters, digits, '-', '_' and '.' "
        f"(not first), at most 128, and not {LATEST_LINK!r}"
    )
