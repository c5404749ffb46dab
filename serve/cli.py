"""`serve` command line: run the HTTP server, or answer label queries for files with `predict`.

    serve                                           # every model in models/, HTTP on 0.0.0.0:8501
    serve predict a.jpg b.png --top_k 3             # the only model (or --model_name N [--version V])
    serve --model_name digits --model_base_path /models/digits     # one model, TF Serving's way
    serve --model_config_file models.config         # TF Serving's model_config_list
    serve --model_dir models/digits/3               # one export folder
    serve --models_dir /models --wait_for_model     # a container started before any export

Exit codes: 0 ok, 2 bad usage, model directory or input file (one line on stderr), 1 internal failure.
With --wait_for_model no model to serve is no start-up failure: the server answers 503 until one loads.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
from pathlib import Path

import click
import numpy as np

from serve.model_info import ModelDirError
from serve.models import MODEL_NAME
from serve.models.config import ModelConfig, ModelConfigError
from serve.models.repository import BasePaths, Catalog, ConfigFile, ModelsDir, SingleExport
from serve.preprocess import ImageDecodeError, preprocess
from serve.text import printable

log = logging.getLogger("serve")


class ServeError(Exception):
    """A problem the user can fix; printed as one line, exit code 2."""


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--models_dir",
    default="models",
    show_default=True,
    envvar="SERVE_MODELS_DIR",
    show_envvar=True,
    help="Serve every model in this folder: <models_dir>/<name>/<version>/, as retrain exports them.",
)
@click.option(
    "--model_name",
    help="With --models_dir: serve only this model. With --model_base_path: its name [default: the folder's]. "
    "With --model_dir: its name [default: retrained].",
)
@click.option(
    "--model_base_path",
    help="Serve one model whose numbered version folders are here (TF Serving's flag; with --model_name).",
)
@click.option(
    "--model_config_file",
    envvar="SERVE_MODEL_CONFIG_FILE",
    show_envvar=True,
    help="TF Serving's model_config_list text file: names, base paths, version policies and labels; "
    "read again when it changes and on SIGHUP.",
)
@click.option(
    "--model_dir",
    envvar="SERVE_MODEL_DIR",
    show_envvar=True,
    help="Serve one retrain export folder (or a link to one, followed when it moves).",
)
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option(
    "--port", default=8501, show_default=True, envvar="SERVE_PORT", show_envvar=True, type=click.IntRange(0, 65535)
)
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
    help="How often to look for new, changed and removed models and versions (0: only on SIGHUP).",
)
@click.option(
    "--variant",
    type=click.Choice(["tflite", "tflite_fp16", "tflite_int8"]),
    default="tflite",
    show_default=True,
    envvar="SERVE_VARIANT",
    show_envvar=True,
    help="Which TFLite file of each export to run: model.tflite, or the smaller model_fp16.tflite or "
    "model_int8.tflite that `retrain --export` wrote (run whole: a variant shares no backbone).",
)
@click.option(
    "--share_backbones/--no_share_backbones",
    default=True,
    show_default=True,
    help="Run one backbone for all models exported on it (each adds only its head), or each model.tflite whole.",
)
@click.option(
    "--wait_for_model",
    is_flag=True,
    envvar="SERVE_WAIT_FOR_MODEL",
    show_envvar=True,
    help="If there is no model to serve yet, start anyway (503 until one loads) instead of exiting 2.",
)
@click.option(
    "--admin_token_file",
    envvar="SERVE_ADMIN_TOKEN_FILE",
    show_envvar=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Turns on the job API (training through the server): a file holding the token its requests must send.",
)
@click.option(
    "--bottleneck_dir",
    help="The jobs' bottleneck cache.  [default: <models_dir>/.cache/bottlenecks]",
)
@click.option("--max_job_upload_mb", default=1024, show_default=True, type=click.IntRange(min=1), help="A job's zip.")
@click.option(
    "--max_job_mb", default=2048, show_default=True, type=click.IntRange(min=1), help="What a job's zip unpacks to."
)
@click.option("--max_job_files", default=20_000, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--max_job_ratio",
    default=200,
    show_default=True,
    type=click.IntRange(min=1),
    help="How many times a zip member may inflate (a zip bomb inflates thousands of times).",
)
@click.option("--max_job_steps", default=20_000, show_default=True, type=click.IntRange(min=1))
@click.option("--max_queued_jobs", default=4, show_default=True, type=click.IntRange(min=1))
@click.option("--log_format", default="text", show_default=True, type=click.Choice(["text", "json"]))
@click.pass_context
def main(ctx: click.Context, **options) -> None:
    """Serve a model exported by retrain: image in, labels ranked by confidence out."""
    _configure_logging(options["log_format"])
    options["catalog"] = _catalog(ctx, options)
    ctx.obj = options
    if ctx.invoked_subcommand is None:
        _run_server(**options)


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--top_k", default=5, show_default=True, type=click.IntRange(min=1))
@click.option("--model_name", "name", help="The model to ask  [default: the only one]")
@click.option("--version", type=click.IntRange(min=0), help="Its version  [default: the one serve would answer with]")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image, with the model and version.")
@click.pass_obj
def predict(
    options: dict, images: tuple[Path, ...], top_k: int, name: str | None, version: int | None, as_json: bool
) -> None:
    """Print the top_k labels of each image file."""
    from serve.runtime import load_model

    name, folder = _version_folder(options["catalog"], name, version)
    model = _load(
        lambda: load_model(
            folder, workers=1, threads_per_worker=options["threads_per_worker"], variant=options["variant"]
        )
    )
    spec = {"name": name, "version": str(model.version)}
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
            print(json.dumps({"file": str(path), "predictions": [r.__dict__ for r in ranked], "model_spec": spec}))
        else:
            print(f"{path}: " + ", ".join(f"{r.label} ({r.score:.3f})" for r in ranked))
    if failed:
        sys.exit(2)


def _run_server(**options) -> None:
    import uvicorn

    from serve.app import ServeSettings, create_app
    from serve.connections import header_timeout_protocol
    from serve.memory import map_large_buffers
    from serve.metrics import ServeMetrics
    from serve.models.loader import Batching, Loader
    from serve.models.manager import ModelManager

    map_large_buffers()  # before anything large is allocated: the decoding budget then bounds RSS
    metrics = ServeMetrics()
    batching = Batching(
        options["workers"], options["threads_per_worker"], options["max_batch_size"], options["batch_timeout_ms"] / 1000
    )
    loader = Loader(batching, metrics, share_backbones=options["share_backbones"], variant=options["variant"])
    catalog: Catalog = options["catalog"]
    manager = ModelManager(catalog, loader, on_change=metrics.serving)
    manager.reconcile(quiet=True)  # the refusals are reported below, once
    refusals = manager.refusals()
    if manager.ready:
        for refusal in refusals:
            log.error("model %s version %d refused: %s", refusal.model, refusal.version, refusal.error)
    elif options["wait_for_model"]:
        log.warning("no model to serve yet (%s); waiting for one", _why_none(catalog, refusals))
    else:
        raise ServeError(_why_none(catalog, refusals))
    manager.watch(options["poll_seconds"])
    signal.signal(signal.SIGHUP, lambda *_: manager.request_reload())
    settings = ServeSettings(
        max_request_bytes=options["max_request_bytes"],
        max_image_pixels=options["max_image_pixels"],
        max_images_per_request=options["max_images_per_request"],
        decode_memory_bytes=options["decode_memory_mb"] * 2**20,
        max_body_bytes_in_flight=options["max_body_mb_in_flight"] * 2**20,
        allowed_hosts=_names(options["allowed_hosts"]),
        cors_origins=_names(options["cors_origins"]),
        retry_after_seconds=math.ceil(options["poll_seconds"]) or 5,  # the next look for an export
        max_job_upload_bytes=options["max_job_upload_mb"] * 2**20,
        variant=options["variant"],
    )
    jobs, job_settings = _jobs(options, catalog, manager)
    try:
        uvicorn.run(
            create_app(manager, settings, metrics, jobs, job_settings),
            host=options["host"],
            port=options["port"],
            http=header_timeout_protocol(options["header_timeout_seconds"]),
            log_config=None,
            access_log=False,
        )
    finally:
        if jobs is not None:
            jobs.close()
        manager.close()


def _jobs(options: dict, catalog: Catalog, manager):
    """The job runner and its settings, when --admin_token_file turns the job API on."""
    if options["admin_token_file"] is None:
        return None, None
    from serve.jobs.archive import ArchiveLimits
    from serve.jobs.routes import JobSettings, read_token
    from serve.jobs.runner import JobRunner

    if not isinstance(catalog, ModelsDir) or catalog.only is not None:
        raise ServeError("training through the server (--admin_token_file) needs --models_dir, where jobs export")
    try:
        token = read_token(options["admin_token_file"])
    except (OSError, UnicodeDecodeError) as e:
        raise ServeError(f"--admin_token_file {printable(options['admin_token_file'])}: {e}") from e
    except ValueError as e:
        raise ServeError(str(e)) from e
    limits = ArchiveLimits(options["max_job_files"], options["max_job_mb"] * 2**20, options["max_job_ratio"])
    root = catalog.root
    bottlenecks = Path(options["bottleneck_dir"]) if options["bottleneck_dir"] else root / ".cache" / "bottlenecks"
    try:
        runner = JobRunner(
            root / ".jobs", root, bottlenecks, options["max_queued_jobs"], on_exported=lambda _: manager.look_now()
        )
    except OSError as e:
        raise ServeError(f"--models_dir {printable(root)} must be writable for jobs: {e.strerror or e}") from e
    log.warning("the job API is on: POST /v1/models/<name>/jobs with the admin token")
    return runner, JobSettings(token, limits, options["max_job_steps"])


MODES = ("model_config_file", "model_base_path", "model_dir", "models_dir")


def _catalog(ctx: click.Context, options: dict) -> Catalog:
    """Where the models come from: the one mode given on the command line, else in the environment,
    else --models_dir's default. Two at once is a usage error."""
    sources = {mode: ctx.get_parameter_source(mode) for mode in MODES if options[mode]}
    for given in (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT):
        modes = [mode for mode, source in sources.items() if source == given]
        if len(modes) > 1:
            raise click.UsageError(f"give one of --{modes[0]} and --{modes[1]}, not both")
        if modes:
            break
    else:
        modes = ["models_dir"]
    mode, name = modes[0], options["model_name"]
    if name is not None and not MODEL_NAME.fullmatch(name):
        raise click.UsageError(f"--model_name {printable(name)!r} is not a model name (letters, digits, '-', '_', '.')")
    if mode == "model_config_file":
        if name is not None:
            raise click.UsageError("--model_name names no model of --model_config_file; the file names them")
        return ConfigFile(Path(options[mode]))
    if mode == "model_base_path":
        base = Path(options[mode]).expanduser().absolute()
        return BasePaths([ModelConfig(name or _folder_name(base), base)])
    if mode == "model_dir":
        return SingleExport(Path(options[mode]).expanduser(), name or "retrained")
    return ModelsDir(Path(options[mode]).expanduser(), only=name)


def _folder_name(base: Path) -> str:
    if not MODEL_NAME.fullmatch(base.name):
        raise click.UsageError(f"name the model of --model_base_path {printable(base)} with --model_name")
    return base.name


def _version_folder(catalog: Catalog, name: str | None, version: int | None) -> tuple[str, Path]:
    """The model and version folder `serve predict` asks: as the server would answer a request naming them."""
    try:
        configs = catalog.models()
    except ModelConfigError as e:
        raise ServeError(str(e)) from e
    names = [config.name for config in configs]
    if name is None and len(configs) == 1:
        (config,) = configs
    elif name is None:
        if not configs:
            raise ServeError(f"no model in {catalog.describe()}: {_how_to_get_one(catalog)}")
        raise ServeError(
            f"{catalog.describe()} has {len(configs)} models; name one with --model_name: {', '.join(names)}"
        )
    elif name in names:
        config = configs[names.index(name)]
    else:
        raise ServeError(f"no model {printable(name)!r} in {catalog.describe()}; there: {', '.join(names) or 'none'}")
    folders = catalog.versions(config)
    if version is not None:
        if version not in folders:
            found = ", ".join(map(str, sorted(folders))) or "none"
            raise ServeError(f"model {config.name!r} has no version {version} (versions: {found})")
        return config.name, folders[version]
    chosen = config.policy.choose(folders)
    if not chosen:
        raise ServeError(f"model {config.name!r} has no version in {config.base_path}")
    return config.name, folders[max(chosen)]


def _how_to_get_one(catalog: Catalog) -> str:
    if isinstance(catalog, ModelsDir):
        return "train one first (retrain --image_dir <folder of labelled folders>), or start with --wait_for_model"
    return "start with --wait_for_model to wait for one"


def _why_none(catalog: Catalog, refusals: list) -> str:
    """Why a server has no model to serve, in one line: the first refusal, or what is missing."""
    if refusals:
        extra = f" (and {len(refusals) - 1} more refused)" if len(refusals) > 1 else ""
        return refusals[0].error + extra
    if isinstance(catalog, SingleExport) and not catalog.directory.is_dir():
        return f"--model_dir {printable(catalog.directory)} is not a directory"
    if isinstance(catalog, ModelsDir):
        return f"no model in --models_dir {printable(catalog.describe())}: {_how_to_get_one(catalog)}"
    return f"no model version in {printable(catalog.describe())}: {_how_to_get_one(catalog)}"


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
