"""The README's commands, typed as written, through the installed console scripts.

Which commands: every fenced block of the quick start (before the first `## ` heading) and of the
sections named in SECTIONS, subsections included. In those sections a block must be
- ```sh: one command a line (a trailing backslash continues it); a `# ...` comment is for readers;
- ```console: a transcript: `$ command`, then what it prints. A line `...` stands for any number of
  lines, a line ending in `...` for any line that starts with what comes before it.
A command whose comment says `needs the internet`, `needs a GPU`, `needs a Ray cluster` or `needs a
container engine` is not run (this machine has none of them); `make test` is this suite itself.
Every other command runs, verbatim, in README order.

How: with bash in a scratch copy of the project whose .venv is this one (so `make demo` finds its
install done), `.venv/bin` first on PATH, HOME a fresh folder (the first run computes every
bottleneck, as a newcomer's does), no RETRAIN_ or SERVE_ variables, inside a private network
namespace so that the README's `serve` on 0.0.0.0:8501 and `localhost:8501` are this test's alone.
A `serve` without a subcommand is a server: started in the background, awaited on /readyz, and
stopped at the end.

What a transcript is compared with, what the command printed (stdout and stderr) the first time it
ran:
- a run's log (`make`, `retrain`): line by line with every number a wildcard (speeds and times are
  the host's) and `~` for HOME; the `Found ...` line exactly and the final test accuracy within
  1 point;
- an answer (`serve ... predict`, `curl`): labels exactly and scores within 0.01 (float noise across
  CPUs), where a ranked label whose README score is under 0.01 may stand in any order.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from scripts.check_console_scripts import problems

from . import netns
from .conftest import REPO, debian_tool

SECTIONS = (
    "Install without make",
    "The `retrain` command",
    "Serving: the `serve` command",
    "Use the model on a device",
)
NOT_HERE = ("needs the internet", "needs a GPU", "needs a Ray cluster", "needs a container engine")
THIS_SUITE = "make test"
SCORE_TOLERANCE = 0.01
ACCURACY_TOLERANCE = 1.0  # percentage points
HEREDOC = re.compile(r"<<'(\w+)'$")
NUMBER = re.compile(r"\d+(?:\.\d+)?(?:e-?\d+)?")
COMMAND_TIMEOUT = 900  # seconds; the first `make demo` computes 1,797 bottlenecks on a slow CI machine


@dataclass
class Command:
    text: str  # as typed; continuation lines joined by their backslash-newline
    section: str
    expected: list[str] | None = None  # a transcript's printed lines

    @property
    def words(self) -> list[str]:
        return shlex.split(self.text, comments=True)

    @property
    def key(self) -> str:
        """The command without its comment or spacing: a transcript of `make demo` is the quick start's run."""
        return shlex.join(self.words)

    @property
    def not_run_because(self) -> str | None:
        if self.text.split("#", 1)[0].strip() == THIS_SUITE:
            return "this suite itself"
        comment = self.text.partition(" # ")[2]
        return next((reason for reason in NOT_HERE if reason in comment), None)

    @property
    def is_server(self) -> bool:
        return self.words[:1] == ["serve"] and "predict" not in self.words


@dataclass
class Block:
    kind: str
    section: str
    lines: list[str] = field(default_factory=list)


def readme_blocks(text: str) -> list[Block]:
    """The fenced blocks of the quick start and of SECTIONS, in order."""
    blocks: list[Block] = []
    section, current = "quick start", None
    for line in text.splitlines():
        if current is not None:
            if line.startswith("```"):
                current = None
            else:
                current.lines.append(line)
            continue
        if line.startswith("## "):
            section = line[3:].strip()
        elif line.startswith("```") and (section == "quick start" or section in SECTIONS):
            current = Block(line[3:].strip(), section)
            blocks.append(current)
    return blocks


def readme_commands(text: str) -> list[Command]:
    commands: list[Command] = []
    for block in readme_blocks(text):
        if block.kind not in ("sh", "console"):
            raise AssertionError(f"README, {block.section}: a ``` block must be `sh` or `console`, not {block.kind!r}")
        lines = iter(block.lines)
        for line in lines:
            if block.kind == "console" and not line.startswith("$ "):
                if not commands or commands[-1].expected is None:
                    raise AssertionError(f"README, {block.section}: output before any `$ ` command: {line!r}")
                commands[-1].expected.append(line)
                continue
            typed = line.removeprefix("$ ") if block.kind == "console" else line
            while typed.endswith("\\"):
                typed += "\n" + next(lines)
            heredoc = HEREDOC.search(typed)
            if heredoc:  # `cat > file <<'EOF'`: the lines up to EOF are its input, not commands
                for body in lines:
                    typed += "\n" + body
                    if body == heredoc.group(1):
                        break
            if typed.strip():
                commands.append(Command(typed, block.section, [] if block.kind == "console" else None))
    return commands


# --- comparing a transcript with what the command printed ------------------------------------------


def log_pattern(expected: list[str]) -> re.Pattern:
    """A regex for a whole log: `...` lines match any lines, numbers any number."""
    parts = []
    for line in expected:
        if line == "...":
            parts.append(r"(?:[^\n]*\n)*")
            continue
        prefix = line.endswith("...")
        text = line.removesuffix("...") if prefix else line
        pieces = [re.escape(piece) for piece in NUMBER.split(text)]
        parts.append(NUMBER.pattern.join(pieces) + (r"[^\n]*" if prefix else "") + r"\n")
    return re.compile("".join(parts))


def check_log(expected: list[str], printed: str) -> None:
    assert log_pattern(expected).fullmatch(printed), "the README's log is not what the command printed:\n" + printed
    for line in expected:
        if line.startswith("Found "):
            assert line in printed.splitlines(), f"README says {line!r}; printed:\n{printed}"
    shown, got = (re.findall(r"Final test accuracy = ([\d.]+)%", text) for text in ("\n".join(expected), printed))
    if shown:
        assert got and abs(float(got[0]) - float(shown[0])) <= ACCURACY_TOLERANCE, (shown, got)


def same_ranking(expected: list[tuple[str, float]], got: list[tuple[str, float]], where: str) -> None:
    assert len(got) == len(expected), f"{where}: README ranks {expected}, printed {got}"
    for (label, score), (got_label, got_score) in zip(expected, got, strict=True):
        assert abs(got_score - score) <= SCORE_TOLERANCE, f"{where}: README {expected}, printed {got}"
        if score >= SCORE_TOLERANCE:
            assert got_label == label, f"{where}: README {expected}, printed {got}"


def same_answer(expected: object, got: object, where: str = "answer") -> None:
    """JSON answers: the same shape and strings, numbers within SCORE_TOLERANCE, rankings by same_ranking."""
    if isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys(), f"{where}: README {expected}, got {got}"
        for key, value in expected.items():
            same_answer(value, got[key], f"{where}.{key}")
    elif isinstance(expected, list) and expected and all(isinstance(e, dict) and "label" in e for e in expected):
        assert isinstance(got, list), f"{where}: README {expected}, got {got}"
        same_ranking(
            [(e["label"], e["score"]) for e in expected], [(g["label"], g["score"]) for g in got], where
        )  # fmt: skip
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), f"{where}: README {expected}, got {got}"
        for number, (value, got_value) in enumerate(zip(expected, got, strict=True)):
            same_answer(value, got_value, f"{where}[{number}]")
    elif isinstance(expected, float | int) and not isinstance(expected, bool):
        assert isinstance(got, float | int) and abs(got - expected) <= SCORE_TOLERANCE, f"{where}: {expected} vs {got}"
    else:
        assert got == expected, f"{where}: README {expected!r}, got {got!r}"


def ranked_line(line: str) -> tuple[str, list[tuple[str, float]]]:
    """`path: 7 (0.814), 3 (0.079)` -> ('path', [('7', 0.814), ('3', 0.079)])."""
    path, _, ranking = line.rpartition(": ")
    return path, [(label, float(score)) for label, score in re.findall(r"(\S+) \(([\d.]+)\)", ranking)]


def check_transcript(command: Command, printed: str) -> None:
    program = command.words[0]
    if program in ("make", "retrain"):
        check_log(command.expected, printed)
    elif program == "serve":
        got = [ranked_line(line) for line in printed.splitlines()]
        shown = [ranked_line(line) for line in command.expected]
        assert [path for path, _ in got] == [path for path, _ in shown], printed
        for (path, ranking), (_, got_ranking) in zip(shown, got, strict=True):
            same_ranking(ranking, got_ranking, path)
    elif program == "curl":
        same_answer(json.loads("\n".join(command.expected)), json.loads(printed), command.text)
    else:
        raise AssertionError(f"README: no rule to compare the output of {program!r}")


# --- running the README ------------------------------------------------------------------------------


@pytest.fixture
def newcomer(tmp_path: Path):
    """(project copy, environment, namespace): where and how the README's commands run."""
    debian_tool("curl", "curl")
    stamp = REPO / ".venv" / ".installed-demo"
    inputs = [REPO / "pyproject.toml", REPO / "constraints.txt"]
    if not stamp.exists() or any(path.stat().st_mtime > stamp.stat().st_mtime for path in inputs):
        pytest.fail(".venv is older than pyproject.toml or constraints.txt (the README's `make demo` would reinstall, "
                    "offline): run `make test`, which refreshes it first")  # fmt: skip
    project = tmp_path / "retrain"
    ignore = shutil.ignore_patterns(".venv", ".git", "models", "__pycache__", ".*_cache", "results")
    shutil.copytree(REPO, project, ignore=ignore)  # copy2: the mtimes make keeps .venv's install stamps valid
    (project / ".venv").symlink_to(REPO / ".venv")
    home = tmp_path / "home"
    home.mkdir()
    # A newcomer's shell: none of this project's settings, and not inside `make test` (MAKEFLAGS and
    # MAKELEVEL would make the README's `make demo` print "Entering directory" lines).
    ours = ("RETRAIN_", "SERVE_", "PYTEST", "VIRTUAL_ENV", "MAKE", "MFLAGS")
    env = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    env.update(HOME=str(home), PATH=f"{project / '.venv' / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}")
    namespace = netns.create("retrain-readme")
    try:
        yield project, env, namespace
    finally:
        netns.delete(namespace)


def test_the_readme_as_typed(newcomer):
    project, env, namespace = newcomer
    commands = readme_commands((REPO / "README.md").read_text())
    sections = {command.section for command in commands}
    assert sections == {"quick start", *SECTIONS}, f"README sections with commands: {sorted(sections)}"
    printed: dict[str, str] = {}  # what each command printed the first time it ran
    servers: list[subprocess.Popen] = []
    not_run = []
    try:
        for command in commands:
            reason = command.not_run_because
            if reason:
                not_run.append((command.text, reason))
            elif command.is_server:
                servers.append(_start_server(command, project, env, namespace))
            elif command.key not in printed:
                print(f"$ {command.text}", flush=True)
                printed[command.key] = _run(command, project, env, namespace)
            if command.expected is not None and not reason:
                check_transcript(command, printed[command.key].replace(env["HOME"], "~"))
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=30)
    ran = {key.split()[0] for key in printed}
    assert {"make", "retrain", "serve", "curl"} <= ran, f"README commands run: {sorted(printed)}"
    assert servers, "the README starts no server"
    print("not run here:", *(f"  {text}  ({reason})" for text, reason in not_run), sep="\n")
    assert len(not_run) <= 10, f"more README commands are not run here than expected: {not_run}"


def _run(command: Command, project: Path, env: dict[str, str], namespace: str) -> str:
    """What the command printed as a terminal shows it: stdout and stderr in one, except curl's, whose
    progress meter goes to stderr only when its stdout is not a terminal."""
    stderr = subprocess.PIPE if command.words[0] == "curl" else subprocess.STDOUT
    result = subprocess.run(
        netns.command(namespace, ["bash", "-c", command.text]), cwd=project, env=env,
        stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=COMMAND_TIMEOUT,
    )  # fmt: skip
    said = result.stdout + (result.stderr or "")
    assert result.returncode == 0, f"README command failed ({result.returncode}): {command.text}\n{said}"
    return result.stdout


def _start_server(command: Command, project: Path, env: dict[str, str], namespace: str) -> subprocess.Popen:
    words = command.words
    port = words[words.index("--port") + 1] if "--port" in words else "8501"
    log = project / f"serve-{port}.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            netns.command(namespace, ["bash", "-c", f"exec {command.text}"]), cwd=project, env=env,
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    probe = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"localhost:{port}/readyz"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and server.poll() is None:
        answer = subprocess.run(netns.command(namespace, probe), capture_output=True, text=True)
        if answer.stdout == "200":
            return server
        time.sleep(0.2)
    server.kill()
    pytest.fail(f"README's `{command.text}` did not become ready:\n{log.read_text(errors='replace')}")


def test_the_installed_commands_are_the_projects():
    """`.venv/bin/retrain` and `.venv/bin/serve` run this project's entry points, not Ray's `serve`."""
    bin_dir = REPO / ".venv" / "bin"
    if not bin_dir.is_dir():
        pytest.skip("no .venv here: `make test` makes one")
    assert problems(bin_dir) == []


def test_readme_parsing_reads_transcripts_and_marks():
    text = """intro
```sh
make demo   # quick
make test
```
## Serving: the `serve` command
```console
$ curl -d x \\
       localhost:8501/a
{"a": 1}
$ serve --model_dir m predict a.png
a.png: 7 (0.900)
```
```sh
docker run x   # needs a container engine
serve --model_dir m
cat > m.config <<'EOF'
config { name: "m" }
EOF
```
## Elsewhere
```
ignored
```
"""
    commands = readme_commands(text)
    assert [c.text for c in commands] == [
        "make demo   # quick", "make test", "curl -d x \\\n       localhost:8501/a",
        "serve --model_dir m predict a.png", "docker run x   # needs a container engine", "serve --model_dir m",
        "cat > m.config <<'EOF'\nconfig { name: \"m\" }\nEOF",
    ]  # fmt: skip
    assert [c.not_run_because for c in commands] == [
        None,
        "this suite itself",
        None,
        None,
        "needs a container engine",
        None,
        None,
    ]
    assert commands[2].expected == ['{"a": 1}'] and commands[3].expected == ["a.png: 7 (0.900)"]
    assert [c.is_server for c in commands] == [False, False, False, False, False, True, False]


def test_log_comparison_wildcards_numbers_and_elisions():
    expected = [
        "Found 3 images.",
        "Bottlenecks: 0 from cache (262.5 images/s)",
        "...",
        "Step 9: x = 1.0%",
        "Done in...",
    ]
    check_log(
        expected,
        "Found 3 images.\nBottlenecks: 3 from cache (9.1 images/s)\nStep 0: x = 3%\nStep 9: x = 2%\nDone in 3s.\n",
    )
    with pytest.raises(AssertionError):  # a line the README shows is missing
        check_log(expected, "Found 3 images.\nBottlenecks: 3 from cache (9.1 images/s)\nDone in 3s.\n")
    with pytest.raises(AssertionError):  # the image count is not a timing
        check_log(expected, "Found 4 images.\nBottlenecks: 3 from cache (9.1 images/s)\nStep 9: x = 2%\nDone in 3s.\n")


def test_answer_comparison_has_a_tolerance_and_ignores_only_near_ties():
    shown = [("7", 0.814), ("3", 0.079), ("4", 0.001), ("1", 0.0)]
    same_ranking(shown, [("7", 0.81), ("3", 0.08), ("1", 0.002), ("4", 0.0)], "near tie swapped")
    for wrong in (
        [("3", 0.814), ("7", 0.079), ("4", 0.0), ("1", 0.0)],
        [("7", 1.0), ("3", 0.0), ("4", 0.0), ("1", 0.0)],
    ):
        with pytest.raises(AssertionError):
            same_ranking(shown, wrong, "wrong")
    same_answer(
        {"results": [{"filename": "a.png", "score": 0.5}]}, {"results": [{"filename": "a.png", "score": 0.505}]}
    )
    with pytest.raises(AssertionError):
        same_answer({"classes": ["0", "1"]}, {"classes": ["1", "0"]})
