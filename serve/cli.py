"""`serve` command line: run the HTTP server, or answer label queries for files with `predict`.

    serve --model_dir models/latest                          # HTTP on 0.0.0.0:8501
    serve --model_dir models/latest predict a.jpg b.png --top_k 3
    serve --model_dir /models/latest --wait_for_model       # a container started before any export

Exit codes: 0 ok, 2 bad usage, model directory or input file (one line on stderr), 1 internal failure.
With --wait_for_model a missing or broken model directory is no start-up failure: the server answers
503 until an export loads there.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path

import click
import numpy as np

from serve.model_info import ModelDirError
from serve.preprocess import ImageDecodeError, preprocess

log = logging.getLogger("serve")


class ServeError(Exception):
    """A problem the user can fix; printed as one line, exit code 2."""


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--model_dir",
    default="models/latest",
    show_default=True,
    envvar="SERVE_MODEL_DIR",
    show_envvar=True,
    help="A retrain export (or a link to one).",
)
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option(
    "--port", default=8501, show_default=True, envvar="SERVE_PORT", show_envvar=True, type=click.IntRange(0, 65535)
)
@click.option("--model_name", default="retrained", show_default=True, help="The name in /v1/models/<name> paths.")
@click.option(
    "--workers",
    default=os.cpu_count() or 1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Inference threads, each with its own interpreter.",
)
@click.option(
    "--threads_per_worker", type=click.IntRange(min=1), help="Interpreter threads.  [default: cores / workers]"
)
@click.option(
    "--max_batch_size",
    default=4,
    show_default=True,
    type=click.IntRange(min=1),
    help="Most images per interpreter call; small, so every worker gets a share of a burst.",
)
@click.option(
    "--batch_timeout_ms",
    default=2.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="How long a busy worker waits for more requests to batch.",
)
@click.option("--max_request_bytes", default=32 * 2**20, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--max_image_pixels",
    default=40_000_000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Larger images are refused (413) before decoding.",
)
@click.option(
    "--max_images_per_request",
    default=64,
    show_default=True,
    type=click.IntRange(min=1),
    help="Most images in one request (files of an upload, instances of a JSON body); more is refused.",
)
@click.option(
    "--decode_memory_mb",
    default=768,
    show_default=True,
    type=click.IntRange(min=1),
    help="Memory for decoding images at once, across all requests; an image that alone needs more is refused (413).",
)
@click.option(
    "--max_body_mb_in_flight",
    default=128,
    show_default=True,
    type=click.IntRange(min=1),
    help="Request bodies being received at once, across all requests; past it, new bodies get 503.",
)
@click.option(
    "--header_timeout_seconds",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="A connection that takes longer to send a request's line and headers is closed.",
)
@click.option(
    "--allowed_hosts",
    default="*",
    show_default=True,
    envvar="SERVE_ALLOWED_HOSTS",
    show_envvar=True,
    help="Comma-separated Host header values to serve (e.g. localhost,serve.example.com,*.example.com); "
    "others get 400. Name yours where browsers on other sites can reach the server (DNS rebinding).",
)
@click.option(
    "--cors_origins",
    default="",
    help="Comma-separated origins (https://app.example.com) whose pages may read answers; none by default, "
    "so only pages served by serve itself can.",
)
@click.option(
    "--poll_seconds",
    default=2.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="How often to look for a new export in --model_dir (0: only on SIGHUP).",
)
@click.option(
    "--wait_for_model",
    is_flag=True,
    envvar="SERVE_WAIT_FOR_MODEL",
    show_envvar=True,
    help="If --model_dir is missing or broken, start anyway (503 until an export loads) instead of exiting 2.",
)
@click.option("--log_format", default="text", show_default=True, type=click.Choice(["text", "json"]))
@click.pass_context
def main(ctx: click.Context, **options) -> None:
    """Serve a model exported by retrain: image in, labels ranked by confidence out."""
    _configure_logging(options["log_format"])
    ctx.obj = options
    if ctx.invoked_subcommand is None:
        _run_server(**options)


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--top_k", default=5, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image.")
@click.pass_obj
def predict(options: dict, images: tuple[Path, ...], top_k: int, as_json: bool) -> None:
    """Print the top_k labels of each image file."""
    from serve.runtime import load_model

    model = _load(lambda: load_model(options["model_dir"], workers=1, threads_per_worker=options["threads_per_worker"]))
    failed = 0
    for path in images:
        try:
            pixels = preprocess(path.read_bytes(), model.info.input_spec, options["max_image_pixels"])
        except (OSError, ImageDecodeError) as e:
            print(f"serve: error: {path}: {getattr(e, 'strerror', None) or e}", file=sys.stderr)
            failed += 1
            continue
        ranked = model.rank(model.runners[0].scores(pixels[np.newaxis])[0], top_k)
        if as_json:
            print(json.dumps({"file": str(path), "predictions": [r.__dict__ for r in ranked]}))
        else:
            print(f"{path}: " + ", ".join(f"{r.label} ({r.score:.3f})" for r in ranked))
    if failed:
        sys.exit(2)


def _run_server(**options) -> None:
    import uvicorn

    from serve.app import ServeSettings, create_app
    from serve.batcher import MicroBatcher
    from serve.connections import header_timeout_protocol
    from serve.memory import map_large_buffers
    from serve.metrics import ServeMetrics
    from serve.runtime import load_model
    from serve.store import ModelStore, ServedModel

    map_large_buffers()  # before anything large is allocated: the decoding budget then bounds RSS
    name = options["model_name"]
    metrics = ServeMetrics()
    batch_sizes = metrics.batch_size.labels(name)

    def load(model_dir: Path) -> ServedModel:
        started = time.perf_counter()
        try:
            model = load_model(model_dir, options["workers"], options["threads_per_worker"])
        except ModelDirError:
            metrics.loaded(name, time.perf_counter() - started, ok=False)
            raise
        metrics.loaded(name, time.perf_counter() - started, ok=True)
        batcher = MicroBatcher(
            model.runners, options["max_batch_size"], options["batch_timeout_ms"] / 1000, on_batch=batch_sizes.observe
        )
        metrics.serving(name, model.version)  # the store swaps it in next
        return ServedModel(model, batcher)

    store = _load(lambda: ModelStore(options["model_dir"], load, wait=options["wait_for_model"]))
    if store.loaded:
        log.warning(
            "serving %s (%d labels) as %r", store.current.directory, len(store.current.labels), options["model_name"]
        )
    store.watch(options["poll_seconds"])
    signal.signal(signal.SIGHUP, lambda *_: store.request_reload())
    settings = ServeSettings(
        model_name=options["model_name"],
        max_request_bytes=options["max_request_bytes"],
        max_image_pixels=options["max_image_pixels"],
        max_images_per_request=options["max_images_per_request"],
        decode_memory_bytes=options["decode_memory_mb"] * 2**20,
        max_body_bytes_in_flight=options["max_body_mb_in_flight"] * 2**20,
        allowed_hosts=_names(options["allowed_hosts"]),
        cors_origins=_names(options["cors_origins"]),
        retry_after_seconds=math.ceil(options["poll_seconds"]) or 5,  # the next look for an export
    )
    try:
        uvicorn.run(
            create_app(store, settings, metrics),
            host=options["host"],
            port=options["port"],
            http=header_timeout_protocol(options["header_timeout_seconds"]),
            log_config=None,
            access_log=False,
        )
    finally:
        store.close()


def _names(listed: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in listed.split(",") if name.strip())


def _load(loader):
    try:
        return loader()
    except ModelDirError as e:
        raise ServeError(str(e)) from e


def entry_point(argv: list[str] | None = None) -> None:
    """Console-script entry: one stderr line and exit code 2 for anything the user can fix."""
    args = sys.argv[1:] if argv is None else argv
    try:
        main.main(args=args, prog_name="serve", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.UsageError as e:
        _fail(2, e.format_message())
    except ServeError as e:
        _fail(2, str(e))
    except OSError as e:  # e.g. the port is taken
        _fail(2, f"{e.strerror or e}")
    except Exception as e:
        _fail(1, f"internal error: {type(e).__name__}: {e}")


def _fail(code: int, message: str) -> None:
    print(f"serve: error: {message}", file=sys.stderr)
    sys.exit(code)


def _configure_logging(log_format: str) -> None:
    # Log through a copy of fd 2: loading an interpreter points fd 2 at /dev/null for a moment
    # (serve.quiet), and a reload does that while other threads are logging requests.
    handler = logging.StreamHandler(_stderr_copy())
    handler.setFormatter(_JsonLines() if log_format == "json" else logging.Formatter("%(asctime)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    logging.getLogger("serve").setLevel(logging.INFO)


class _JsonLines(logging.Formatter):
    """Every log line as one JSON object; access lines add client, method, path, status, latency_ms."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record), "level": record.levelname.lower(), "logger": record.name}
        entry["message"] = record.getMessage()
        return json.dumps({**entry, **getattr(record, "fields", {})})


def _stderr_copy():
    """A stream on a duplicate of the process's stderr descriptor (sys.stderr if it has none)."""
    try:
        return os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1, errors="backslashreplace")
    except (AttributeError, OSError, ValueError):
        return sys.stderr
