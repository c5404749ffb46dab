"""The benchmarks start as `make bench` starts them: as scripts, whose own folder comes first on
sys.path (a bench file named like a package once shadowed it). Their numbers are not checked here."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import REPO

# The benchmarks themselves; bench/ also holds the helpers they import.
SCRIPTS = sorted(path for path in (REPO / "bench").glob("*.py") if 'if __name__ == "__main__"' in path.read_text())


def test_there_are_benchmarks() -> None:
    assert SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_each_benchmark_script_imports_the_project_and_prints_its_help(script) -> None:
    result = subprocess.run([sys.executable, script, "--help"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Usage:" in result.stdout


def test_from_the_bench_folder_the_project_packages_are_the_real_ones() -> None:
    """A script's folder is sys.path[0]: a bench/serve.py made `import serve.preprocess` fail there."""
    probe = "import serve.preprocess, retrain.cache; print(serve.preprocess.__file__)"
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO / "bench", capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "bench" not in result.stdout
