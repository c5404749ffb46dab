"""The Dockerfile as data: its stages and the instructions a target is built from, for static checks.

The images themselves are built and run by a real engine in tests/test_container_runs.py; these
checks read the file only, so they run in milliseconds where no engine is at hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import dockerfile


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
