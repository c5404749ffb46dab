"""Replays a Dockerfile target on this machine, for tests where no Docker engine runs.

Every container path the Dockerfile uses (/opt, /data, /models, ...) is rebased under a temporary
root. COPY copies from the build context; RUN runs the same shell command with the stage's ARG and
ENV values in its environment; ENTRYPOINT + CMD run against the rebased environment. The only
commands not run for real are the account-management ones (`groupadd`, `useradd`, `chown`): they
need root and the image's user database, so they are no-op stubs on the replay's PATH.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import dockerfile

CONTAINER_ROOTS = ("opt", "data", "models", "cache", "src", "home")
ACCOUNT_COMMANDS = ("groupadd", "useradd", "chown")
HOST_ENV_DROPPED = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
_CONTAINER_PATH = re.compile(rf"(?<![\w./-])(/(?:{'|'.join(CONTAINER_ROOTS)}))(?=[/\s:'\"]|$)")
_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


class ReplayError(Exception):
    """A RUN command failed; `output` holds what it printed."""

    def __init__(self, command: str, output: str):
        super().__init__(f"RUN {command!r} failed:\n{output[-3000:]}")
        self.output = output


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[dockerfile.Command] = field(default_factory=list)


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: dict[str, Stage]

    @classmethod
    def parse(cls, path: Path) -> Dockerfile:
        global_args: dict[str, str] = {}
        stages: dict[str, Stage] = {}
        current: Stage | None = None
        for command in dockerfile.parse_file(str(path)):
            if command.cmd == "FROM":
                base, *alias = command.value
                name = alias[1] if len(alias) == 2 and alias[0].upper() == "AS" else f"stage{len(stages)}"
                current = stages[name.lower()] = Stage(name.lower(), base)
            elif current is None and command.cmd == "ARG":
                key, _, default = command.value[0].partition("=")
                global_args[key] = default
            elif current is not None:
                current.instructions.append(command)
        return cls(global_args, stages)

    def chain(self, target: str) -> list[Stage]:
        """The stages `target` is built from, base first."""
        stages = [self.stages[target]]
        while stages[0].base.lower() in self.stages:
            stages.insert(0, self.stages[stages[0].base.lower()])
        return stages

    def instructions(self, target: str) -> list[dockerfile.Command]:
        return [command for stage in self.chain(target) for command in stage.instructions]


@dataclass
class Image:
    """A replayed target: its root folder, runtime environment and entry point."""

    root: Path
    env: dict[str, str]
    workdir: Path
    entrypoint: list[str]
    cmd: list[str]
    healthcheck: list[str]
    user: str

    def command(self, *args: str) -> list[str]:
        """ENTRYPOINT + `args` (or the default CMD), ready for subprocess."""
        return self.argv([*self.entrypoint, *(args or self.cmd)])

    def argv(self, argv: list[str]) -> list[str]:
        """An exec-form command as the container would run it: the program found on the image's
        PATH, container paths in the arguments rebased."""
        executable = shutil.which(argv[0], path=self.env["PATH"])
        assert executable, f"{argv[0]} is not on the image's PATH {self.env['PATH']}"
        return [executable, *(rebase(arg, self.root) for arg in argv[1:])]

    def path(self, container_path: str) -> Path:
        return Path(rebase(container_path, self.root))


def rebase(text: str, root: Path) -> str:
    """Container paths in `text` moved under `root`: `/opt/venv` -> `<root>/opt/venv`."""
    return _CONTAINER_PATH.sub(lambda match: f"{root}{match.group(1)}", text)


def expand(text: str, variables: dict[str, str]) -> str:
    """`$NAME` and `${NAME}` as Docker expands them in ENV, WORKDIR and COPY."""
    return _VARIABLE.sub(lambda match: variables.get(match.group(1) or match.group(2), ""), text)


def host_bin(folder: Path) -> Path:
    """`python` (the base image's interpreter: this one's base) and the account-command stubs."""
    folder.mkdir(parents=True, exist_ok=True)
    interpreter = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    for name in ("python", "python3"):
        (folder / name).unlink(missing_ok=True)
        (folder / name).symlink_to(interpreter)
    for name in ACCOUNT_COMMANDS:
        stub = folder / name
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    return folder


def replay(file: Dockerfile, target: str, context: Path, root: Path, build_args: dict[str, str] | None = None) -> Image:
    """Builds `target` under `root` the way `docker build --target` would, minus the engine."""
    host_env = {key: value for key, value in os.environ.items() if key not in HOST_ENV_DROPPED}
    host_path = f"{host_bin(root / '.host-bin')}:/usr/local/bin:/usr/bin:/bin"
    env: dict[str, str] = {"PATH": host_path}
    args = {**file.global_args, **(build_args or {})}
    workdir = root
    entrypoint: list[str] = []
    cmd: list[str] = []
    healthcheck: list[str] = []
    user = "root"
    for command in file.instructions(target):
        values = list(command.value)
        if command.cmd == "ARG":
            key, _, default = values[0].partition("=")
            args[key] = (build_args or {}).get(key, default)
        elif command.cmd == "ENV":
            for key, value in zip(values[::2], values[1::2], strict=True):
                env[key] = rebase(expand(value, {**args, **env}), root)
        elif command.cmd == "WORKDIR":
            workdir = Path(rebase(expand(values[0], {**args, **env}), root))
            workdir.mkdir(parents=True, exist_ok=True)
        elif command.cmd == "COPY":
            if any(flag.startswith("--from") for flag in command.flags):
                raise NotImplementedError("COPY --from is not replayed")
            *sources, destination = (expand(value, {**args, **env}) for value in values)
            target = Path(rebase(destination, root)) if destination.startswith("/") else workdir / destination
            _copy(context, sources, target, into_folder=destination.endswith("/") or len(sources) > 1)
        elif command.cmd == "RUN":
            shell = rebase(values[0], root)
            run_env = {**host_env, **args, **env}
            result = subprocess.run(["/bin/sh", "-c", shell], cwd=workdir, env=run_env, capture_output=True, text=True)
            if result.returncode != 0:
                raise ReplayError(values[0], result.stdout + result.stderr)
        elif command.cmd == "USER":
            user = values[0]
        elif command.cmd == "ENTRYPOINT":
            entrypoint = values
        elif command.cmd == "CMD":
            cmd = values
        elif command.cmd == "HEALTHCHECK":
            healthcheck = values[1:] if values[:1] == ["CMD"] else values
        elif command.cmd not in ("EXPOSE", "LABEL", "VOLUME"):
            raise NotImplementedError(f"{command.cmd} is not replayed")
    runtime_env = {**host_env, **env, "HOME": str(workdir)}
    return Image(root, runtime_env, workdir, entrypoint, cmd, healthcheck, user)


def _copy(context: Path, sources: list[str], target: Path, into_folder: bool) -> None:
    """COPY: a folder's contents go to `target`; a file goes to `target`, or into it if it is a folder."""
    for source in sources:
        origin = context / source
        if origin.is_dir():
            shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"), dirs_exist_ok=True)
        else:
            path = target / origin.name if into_folder else target
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, path)
