"""Print the requirements of the project and the given extras, one a line, from ./pyproject.toml alone.

The images install these in a layer of their own before the sources are copied in, so a change to
the code rebuilds in seconds instead of downloading TensorFlow again:

    python scripts/extra_requirements.py train,gpu > requirements.txt
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    """The base dependencies plus each named extra's, in pyproject order; an unknown extra is an error."""
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [extra for extra in extras if extra not in optional]
    if unknown:
        raise SystemExit(f"extra_requirements: no extra named {', '.join(unknown)} (have {', '.join(optional)})")
    return [*project["dependencies"], *(line for extra in extras for line in optional[extra])]


def main() -> None:
    extras = [extra for argument in sys.argv[1:] for extra in argument.split(",") if extra]
    print("\n".join(requirements(Path("pyproject.toml"), extras)))


if __name__ == "__main__":
    main()
