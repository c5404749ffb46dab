"""The model server's repository side: which models and versions exist, which are served, and
the backbones their heads share (see DESIGN.md, "The next stage")."""

import re

MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""A model's name: a folder under --models_dir and a path segment of /v1/models/<name> (TF Serving's)."""

LATEST_LINK = "latest"
"""retrain's link to its newest export, beside the model folders; never a model's name."""
