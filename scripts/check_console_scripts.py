"""Fail loudly unless `retrain` and `serve` on PATH beside this Python are the project's own commands.

Ray's wheel declares a console script named `serve` too (Ray Serve's CLI), and pip writes console
scripts in an order of its own, so whichever package it installs last owns `bin/serve`. The
Makefile and the Dockerfile install the project after every dependency and then run this check
(docs/decisions.md #39):

    .venv/bin/python scripts/check_console_scripts.py
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# What each command's --help says first: the project's own docstrings (retrain/cli.py, serve/cli.py).
OURS = {
    "retrain": "Retrain a pretrained image network",
    "serve": "Serve a model exported by retrain",
}


def problems(bin_dir: Path) -> list[str]:
    """One line for each command in `bin_dir` that is missing or not the project's."""
    found = []
    for name, expected in OURS.items():
        script = bin_dir / name
        if not script.exists():
            found.append(f"{script} is missing")
            continue
        answer = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
        if answer.returncode != 0 or expected not in answer.stdout:
            said = (answer.stdout + answer.stderr).strip().splitlines()
            found.append(f"{script} is not retrain's `{name}` (its --help said: {said[-1] if said else 'nothing'})")
    return found


def main() -> None:
    bin_dir = Path(sys.executable).parent
    found = problems(bin_dir)
    if found:
        fix = "reinstall the project last: pip install --no-deps --force-reinstall -e ."
        raise SystemExit("check_console_scripts: " + "; ".join(found) + f"; {fix}")
    print(f"check_console_scripts: {', '.join(OURS)} in {bin_dir} are retrain's")


if __name__ == "__main__":
    main()
