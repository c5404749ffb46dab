"""A private network namespace with nothing but loopback, for tests whose commands bind or reach
fixed ports (8501, Ray's 6379) as a user types them: inside it, 0.0.0.0 and localhost are this test's
alone, nothing outside can connect, and two test runs never share a port. Needs root and `ip`."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess

import pytest

_names = itertools.count()


def require_namespaces() -> None:
    """Skips where a namespace cannot be made (not root, or no `ip`/`unshare`)."""
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("unshare"):
        pytest.skip("needs root, `ip` and `unshare` for a private network namespace")


def create(prefix: str) -> str:
    """A new namespace, named `<prefix>-<pid>-<n>`, with its loopback up."""
    require_namespaces()
    name = f"{prefix}-{os.getpid()}-{next(_names)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
    return name


def command(name: str, args: list[str]) -> list[str]:
    """`args` as run inside the namespace `name`."""
    return ["ip", "netns", "exec", name, *args]


def delete(name: str) -> None:
    """Kills whatever still runs in the namespace, then removes it."""
    pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    subprocess.run(["ip", "netns", "del", name], check=False)
