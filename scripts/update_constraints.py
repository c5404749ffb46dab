"""Rewrites constraints.txt: the exact versions of everything the project installs.

    .venv/bin/python scripts/update_constraints.py

The Makefile's venv and both container images install with `-c constraints.txt`, so the tests
run on the versions the images ship. The GPU image's CUDA wheels are not in the dev venv; their
versions come from a dry-run resolve of the `gpu` extra.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEADER = "# Exact versions for every install (Makefile, Dockerfile). Regenerate: python scripts/update_constraints.py\n"


def installed() -> list[str]:
    """Every package of the venv but pip itself. `--all` keeps setuptools: tensorflow-hub imports
    `pkg_resources`, which newer setuptools releases no longer ship."""
    freeze = [sys.executable, "-m", "pip", "freeze", "--all", "--exclude-editable", "--disable-pip-version-check"]
    lines = subprocess.run(freeze, check=True, capture_output=True, text=True).stdout.splitlines()
    return [_pinned(line) for line in lines if ("==" in line or " @ " in line) and not line.startswith("pip==")]


def _pinned(line: str) -> str:
    """`name==version`, also for a package pip installed from a local file (`name @ file:///...`)."""
    if " @ " not in line:
        return line
    name = line.split(" @ ")[0]
    return f"{name}=={importlib.metadata.version(name)}"


def gpu_only(pinned_names: set[str]) -> list[str]:
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        resolve = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
        subprocess.run([*resolve, "--report", str(report), f"{REPO}[gpu]"], check=True)
        resolved = json.loads(report.read_text())["install"]
    pins = (f"{item['metadata']['name']}=={item['metadata']['version']}" for item in resolved)
    return [pin for pin in pins if pin.split("==")[0].lower() not in pinned_names | {"retrain"}]


def main() -> None:
    pins = installed()
    names = {pin.split("==")[0].lower() for pin in pins}
    extra = gpu_only(names)
    text = HEADER + "\n".join(pins) + "\n\n# Only in the GPU image (`gpu` extra)\n" + "\n".join(sorted(extra)) + "\n"
    (REPO / "constraints.txt").write_text(text)
    print(f"constraints.txt: {len(pins)} + {len(extra)} GPU-only pins")


if __name__ == "__main__":
    main()
