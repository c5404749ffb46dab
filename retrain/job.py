"""A retrain run on behalf of serve's job runner: `python -m retrain.job <spec.json> <events.jsonl>`.

The spec is what the job's request asked for (the image folder the upload was unpacked into, the
model's name, where models and the bottleneck cache live, the training options); this calls the
same `retrain.pipeline.run` as the `retrain` command, so there is one training path. Everything a
terminal would show goes to stdout and stderr as the command prints it (the runner keeps it as the
job's log); progress, warnings and the result go to the events file as JSON lines, the last one
`{"phase": "succeeded", ...}` or `{"phase": "failed", "error": ...}`.

Exit codes as the command's: 0 succeeded, 2 a problem with the request (bad images, one class),
1 an internal failure.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from retrain import progress
from retrain.errors import RetrainError

PR_SET_PDEATHSIG = 1

# The training options a job may set, with their CLI names; anything else in a spec is refused.
HPARAMS = {"how_many_training_steps": int, "learning_rate": float, "train_batch_size": int, "random_seed": int}
CONFIG = {
    "architecture": str,
    "bottleneck_layers": str,
    "validation_percentage": float,
    "testing_percentage": float,
    "head": str,
}


@dataclass(frozen=True)
class JobSpec:
    image_dir: str
    model_name: str
    models_dir: str
    bottleneck_dir: str
    options: dict

    @classmethod
    def read(cls, path: Path) -> JobSpec:
        data = json.loads(path.read_text())
        return cls(data["image_dir"], data["model_name"], data["models_dir"], data["bottleneck_dir"], data["options"])


class _Events:
    """JSON lines, each flushed at once: the runner reads them while the job runs."""

    def __init__(self, stream: IO[str]):
        self._stream = stream

    def __call__(self, event: dict) -> None:
        self._stream.write(json.dumps(event, default=str) + "\n")
        self._stream.flush()


class _Warnings(logging.Handler):
    """retrain's warnings (skipped files, small classes) as events too, for the job's status."""

    def __init__(self, events: _Events):
        super().__init__(logging.WARNING)
        self._events = events

    def emit(self, record: logging.LogRecord) -> None:
        self._events({"warning": record.getMessage()})


def config_of(spec: JobSpec):
    """The RetrainConfig a spec asks for: the CLI's defaults for everything it leaves out."""
    from retrain.pipeline import RetrainConfig
    from retrain.train import HParams

    unknown = set(spec.options) - set(HPARAMS) - set(CONFIG)
    if unknown:
        raise RetrainError(f"unknown training option {sorted(unknown)[0]!r}")
    hparams = {k: HPARAMS[k](v) for k, v in spec.options.items() if k in HPARAMS}
    config = {k: CONFIG[k](v) for k, v in spec.options.items() if k in CONFIG}
    return RetrainConfig(
        image_dir=spec.image_dir,
        models_dir=spec.models_dir,
        model_name=spec.model_name,
        bottleneck_dir=spec.bottleneck_dir,
        hparams=HParams(**hparams),
        **config,
    )


def _die_with_parent() -> None:
    """A server that dies (even by SIGKILL) takes its job with it: no export appears after it is gone.
    Linux's PR_SET_PDEATHSIG (it follows the thread that started this process: the runner's worker,
    which lives as long as the server); the parent's pid, from the runner, covers a parent gone
    before this ran."""
    parent = os.environ.get("RETRAIN_JOB_PARENT")
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the runner still stops it on a clean exit
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent and os.getppid() != int(parent):
        sys.exit(1)


def main(argv: list[str]) -> int:
    _die_with_parent()
    spec_path, events_path = Path(argv[0]), Path(argv[1])
    logging.basicConfig(level=logging.WARNING, format="retrain: %(levelname)s: %(message)s")
    with events_path.open("a", encoding="utf-8") as stream:
        events = _Events(stream)
        progress.listen(events)
        logging.getLogger("retrain").addHandler(_Warnings(events))
        try:
            from retrain.pipeline import run

            result = run(config_of(JobSpec.read(spec_path)))
        except RetrainError as e:
            events({"phase": "failed", "error": str(e)})
            print(f"retrain: error: {e}", file=sys.stderr)
            return 2
        except Exception as e:
            traceback.print_exc()
            events({"phase": "failed", "error": f"internal error: {type(e).__name__}: {e}"})
            return 1
        events(
            {
                "phase": "succeeded",
                "export": str(result.output_dir),
                "version": int(result.output_dir.name) if result.output_dir.name.isdigit() else None,
                "test_accuracy": result.test_accuracy,
                "test_count": result.test_count,
                "tensorflow_imported": "tensorflow" in sys.modules,
            }
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
