"""A real OCI engine for the container tests: images built from the Dockerfile, run as users run them.

The engine is podman or docker (`RETRAIN_TEST_ENGINE` picks one). Where neither runs and the
tests are root with apt, Debian's podman is installed, as the other tests install their tools.

Two things a fresh CI machine lacks are made here, once, and kept in the engine's store:
- the base image. The Dockerfile's default, python:3.11.7-slim-bookworm, comes from Docker Hub;
  where it is not already present (or named by `RETRAIN_TEST_PYTHON_IMAGE`), an equivalent is
  bootstrapped from the Debian mirror apt already uses: Debian's Python 3.11 on a minimal Debian.
- podman settings this kind of host needs (cgroupfs instead of systemd, runc, explicit ulimits:
  the defaults are refused by the kernel's limits here). They go in a containers.conf of the
  tests' own, so nothing on the machine is changed.

Builds reach the package index through the host's network (`--network host`) and trust the
host's certificate bundle, mounted read-only at the same path; the base image's pip reads it there.
Layers are cached by the engine; the project's files are copied fresh on every build.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .conftest import REPO, debian_tool

DOCKERFILE = REPO / "Dockerfile"
BOOTSTRAPPED_PYTHON_IMAGE = "localhost/retrain-test-python:3.11-bookworm"
# What Debian needs for the Dockerfile's base stage: a `python` with venv, pip's certificates, useradd.
BOOTSTRAP_PACKAGES = "python3,python3-venv,python-is-python3,ca-certificates,passwd"
# Debian's podman with runc (its default, crun, is refused here) and the network stack that publishes ports.
PODMAN_PACKAGES = ("podman", "runc", "netavark", "aardvark-dns", "iptables", "catatonit")
PODMAN_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]

[engine]
cgroup_manager = "cgroupfs"
"""
# podman's own log lines, e.g. that it has no systemd to run a container's healthcheck on a timer.
ENGINE_LOG_LINE = re.compile(r'^time="[^"]*" level=\w+ msg=.*\n?', re.MULTILINE)
TEST_LABEL = "org.retrain.built-by-tests"
BUILD_TIMEOUT = 1800
RUN_TIMEOUT = 600


class EngineError(AssertionError):
    """An engine command failed; the message holds its command line and output."""


@dataclass
class Engine:
    """One container engine's command line, with the environment every call needs."""

    program: str
    kind: str  # "podman" or "docker"
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    def __call__(
        self, *args: str, check: bool = True, timeout: float = RUN_TIMEOUT, input: str | None = None
    ) -> subprocess.CompletedProcess:
        command = [self.program, *args]
        result = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=timeout, input=input)
        result.stderr = ENGINE_LOG_LINE.sub("", result.stderr)  # leave the container's own stderr
        if check and result.returncode != 0:
            raise EngineError(f"`{' '.join(command)}` exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    def has_image(self, name: str) -> bool:
        return self("image", "inspect", name, check=False).returncode == 0

    def build(self, target: str, tag: str, python_image: str) -> float:
        """`build --target <target> -t <tag> .` with PYTHON_IMAGE set; returns the seconds it took.

        The image the tag named before is pruned if nothing else uses it, so repeated test runs on
        one machine do not pile up gigabytes of untagged retrain images (only images this suite
        built carry its label)."""
        args = ["build", "--target", target, "--tag", tag, "--build-arg", f"PYTHON_IMAGE={python_image}"]
        args += ["--network", "host", "--label", f"{TEST_LABEL}=1"]
        if self.kind == "podman":
            args += ["--format", "docker"]  # OCI images drop HEALTHCHECK
            bundle = certificate_bundle()
            if bundle:
                args += ["--volume", f"{bundle}:{bundle}:ro"]
        started = time.monotonic()
        self(*args, str(REPO), timeout=BUILD_TIMEOUT)
        seconds = time.monotonic() - started
        self("image", "prune", "--force", "--filter", f"label={TEST_LABEL}=1", check=False, timeout=300)
        return seconds

    def image_size(self, name: str) -> int:
        return int(json.loads(self("image", "inspect", name).stdout)[0]["Size"])

    def healthcheck(self, image: str) -> list[str]:
        """The image's HEALTHCHECK test, e.g. ["CMD", "python", ...] (podman and docker file it apart)."""
        info = json.loads(self("image", "inspect", image).stdout)[0]
        return (info.get("Healthcheck") or info["Config"].get("Healthcheck") or {}).get("Test", [])

    def inspect(self, name: str) -> dict:
        return json.loads(self("inspect", name).stdout)[0]

    def remove(self, *containers: str) -> None:
        self("rm", "--force", *containers, check=False, timeout=120)


def find_engine(tmp_dir: Path) -> Engine:
    """An engine that can run a container here, or a skip (a failure under CI) saying why not."""
    wanted = os.environ.get("RETRAIN_TEST_ENGINE")
    kinds = [wanted] if wanted else ["podman", "docker"]
    for kind in kinds:
        program = shutil.which(kind)
        if program and kind == "docker" and _docker_daemon_answers(program):
            return Engine(program, "docker")
        if program and kind == "podman":
            return _podman(program, tmp_dir)
    if "podman" in kinds:
        return _podman(debian_tool("podman", *PODMAN_PACKAGES), tmp_dir)
    _unavailable(f"no usable {wanted} here")


def compose_command(engine: Engine) -> list[str]:
    """Compose for this engine: `docker compose` (v2) for docker, podman-compose (a dev dependency,
    installed beside this Python) for podman."""
    if engine.kind == "docker":
        return [engine.program, "compose"]
    program = Path(sys.executable).with_name("podman-compose")
    if not program.is_file():
        _unavailable("podman-compose is missing: `pip install -e '.[dev]'` installs it")
    return [str(program)]


def python_image(engine: Engine) -> str:
    """The image for the Dockerfile's PYTHON_IMAGE: its default when present, else a bootstrapped one."""
    explicit = os.environ.get("RETRAIN_TEST_PYTHON_IMAGE")
    if explicit:
        return explicit
    default = re.search(r"^ARG PYTHON_IMAGE=(\S+)", DOCKERFILE.read_text(), re.MULTILINE)[1]
    for candidate in (default, BOOTSTRAPPED_PYTHON_IMAGE):
        if engine.has_image(candidate):
            return candidate
    mmdebstrap = debian_tool("mmdebstrap", "mmdebstrap")
    suite, mirror = debian_mirror()
    bootstrap = subprocess.Popen(
        [mmdebstrap, "--variant=minbase", f"--include={BOOTSTRAP_PACKAGES}", suite, "-", mirror],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    imported = subprocess.run(
        [engine.program, "import", "-", BOOTSTRAPPED_PYTHON_IMAGE],
        stdin=bootstrap.stdout,
        env=engine.env,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
    )
    bootstrap.stdout.close()
    errors = bootstrap.stderr.read().decode(errors="replace")
    if bootstrap.wait() != 0 or imported.returncode != 0:
        raise EngineError(f"bootstrapping {BOOTSTRAPPED_PYTHON_IMAGE} failed:\n{errors[-2000:]}\n{imported.stderr}")
    return BOOTSTRAPPED_PYTHON_IMAGE


def debian_mirror() -> tuple[str, str]:
    """(suite, mirror URL) of this host's main Debian archive, as apt is configured here."""
    codename = re.search(r"^VERSION_CODENAME=(\S+)", Path("/etc/os-release").read_text(), re.MULTILINE)
    if not codename:
        _unavailable("this host is not Debian: no mirror to bootstrap a base image from")
    suite = codename[1]
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for source in sources:
        text = source.read_text() if source.is_file() else ""
        for uris, suites in re.findall(r"^URIs:\s*(.+)\n(?:.+\n)*?Suites:\s*(.+)$", text, re.MULTILINE):
            if suite in suites.split():
                return suite, uris.split()[0]
        for uri in re.findall(rf"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+{suite}\s", text, re.MULTILINE):
            return suite, uri
    _unavailable(f"apt has no {suite} mirror configured to bootstrap a base image from")


def certificate_bundle() -> str | None:
    """The CA bundle pip trusts on this host (it may hold a proxy's certificate), if one is named."""
    for variable in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        path = os.environ.get(variable)
        if path and Path(path).is_file():
            return path
    default = Path("/etc/ssl/certs/ca-certificates.crt")
    return str(default) if default.is_file() else None


def wait_until(condition: Callable[[], object], what: str, timeout: float = 120) -> None:
    """Polls `condition` until it holds; fails naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.25)


def _podman(program: str, tmp_dir: Path) -> Engine:
    conf = tmp_dir / "containers.conf"
    runtime = '\nruntime = "runc"\n' if shutil.which("runc") else "\n"
    conf.write_text(PODMAN_CONF.rstrip("\n") + runtime)
    engine = Engine(program, "podman", {**os.environ, "CONTAINERS_CONF": str(conf)})
    probe = engine("info", check=False, timeout=120)
    if probe.returncode != 0:
        _unavailable(f"podman cannot start here: {probe.stderr.strip()[-300:]}")
    return engine


def _docker_daemon_answers(program: str) -> bool:
    return subprocess.run([program, "info"], capture_output=True, timeout=60).returncode == 0


def _unavailable(reason: str):
    if os.environ.get("CI"):  # in CI the images must be built: a skip would hide a broken one
        pytest.fail(reason)
    pytest.skip(reason)
