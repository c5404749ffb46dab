"""`retrain` command line: parses retrain.py's flags and calls `retrain.pipeline.run`.

Exit codes: 0 ok, 2 bad usage or input (one line on stderr), 1 internal failure (`--verbose`
adds the traceback).
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import traceback

import click
from click.core import ParameterSource

from retrain import remote
from retrain.backbones import DEFAULT_ARCHITECTURE, FEW_IMAGES_BACKBONE, FEW_IMAGES_PER_CLASS
from retrain.errors import RetrainError
from retrain.quiet import show_tensorflow_logs
from retrain.remote import JOB_OPTIONS

DEFAULT_AUGMENTATION_COPIES = 4
DEFAULT_DECODE_MEMORY_MB = 1024  # retrain.extract.DECODE_MEMORY_BYTES, not imported: it needs the train extra (tqdm)
# Installed by the `train` extra only; the serve image has the `retrain` script but none of these.
TRAINING_MODULES = ("tensorflow", "keras", "tensorflow_hub", "ai_edge_litert", "flatbuffers", "tqdm")
# With --server: the flags that say what to train; the job options (retrain.remote.JOB_OPTIONS) are the others.
REMOTE_FLAGS = frozenset({"image_dir", "model_name", *JOB_OPTIONS})


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--image_dir", help="Folder with one sub-folder of images per label.")
@click.option("--output_dir", help="Export exactly here instead.  [default: <models_dir>/<model_name>/<next version>]")
@click.option(
    "--models_dir",
    default="models",
    show_default=True,
    envvar="RETRAIN_MODELS_DIR",
    show_envvar=True,
    help="Where models go, one folder per name with numbered versions (TF Serving's layout); its `latest` "
    "link points at the newest export.",
)
@click.option(
    "--model_name",
    help="The model's name: letters, digits, '-', '_', '.'.  [default: the --image_dir folder's name]",
)
@click.option(
    "--model_author",
    default="retrain",
    show_default=True,
    help="The author that model.tflite's metadata names (what MediaPipe and Android Studio show).",
)
@click.option(
    "--model_license",
    default="Apache-2.0",
    show_default=True,
    help="The license that model.tflite's metadata states; the default backbones' weights are Apache-2.0, your "
    "images' terms may add to it.",
)
@click.option("--bottleneck_dir", help="Bottleneck cache.  [default: ~/.cache/retrain/bottlenecks]")
@click.option(
    "--architecture",
    default="auto",
    show_default=True,
    help="Backbone: efficientnet_lite0 or efficientnet_lite2 (offline), mobilenet_v2, mobilenet_v3_large, "
    "mobilenet_v3_small, inception_v3; the baselines small_cnn (trained from scratch) and pixels; or auto: "
    f"{DEFAULT_ARCHITECTURE}, and with at most {FEW_IMAGES_PER_CLASS} training images a class also "
    f"{FEW_IMAGES_BACKBONE}'s feature sets, one kept as --bottleneck_layers auto keeps one.",
)
@click.option(
    "--base_model", help="An earlier export (models/<run>) whose network, minus its last layer, is the backbone."
)
@click.option("--tfhub_module", help="A TF Hub image feature-vector module: handle, URL or local SavedModel folder.")
@click.option("--weights_file", help="Local weights for --architecture instead of the ImageNet download.")
@click.option(
    "--image_size",
    type=click.IntRange(min=8),
    help="Input size for a --tfhub_module with no fixed size, and for small_cnn and pixels (default 32).",
)
@click.option(
    "--how_many_training_steps",
    default=4000,
    show_default=True,
    type=click.IntRange(min=1),
    help="How many training steps to run.",
)
@click.option(
    "--train_batch_size", default=10, show_default=True, type=click.IntRange(min=1), help="Images per training step."
)
@click.option(
    "--learning_rate",
    type=click.FloatRange(min=0, min_open=True),
    help="Step size of the head's training.  [default: 0.001 with adam, 0.01 with sgd]",
)
@click.option(
    "--optimizer",
    type=click.Choice(["adam", "sgd"]),
    default="adam",
    show_default=True,
    help="The head's step rule: Adam, or retrain.py's plain gradient descent.",
)
@click.option(
    "--l2_regularizer",
    default=0.001,
    show_default=True,
    type=click.FloatRange(min=0),
    help="L2 penalty on the head's weights.",
)
@click.option(
    "--standardize/--no_standardize",
    default=True,
    show_default=True,
    help="Train the head on bottlenecks scaled to zero mean and unit variance (training-set statistics, "
    "folded into the exported layer).",
)
@click.option(
    "--testing_percentage",
    default=10.0,
    show_default=True,
    type=click.FloatRange(0, 100),
    help="Share of images held out for the final test.",
)
@click.option(
    "--validation_percentage",
    default=10.0,
    show_default=True,
    type=click.FloatRange(0, 100),
    help="Share of images held out for validation.",
)
@click.option(
    "--eval_step_interval",
    default=10,
    show_default=True,
    type=click.IntRange(min=1),
    help="Print accuracy every this many steps.",
)
@click.option("--validation_batch_size", default=100, show_default=True, help="-1 uses the whole validation set.")
@click.option("--test_batch_size", default=-1, show_default=True, help="-1 uses the whole test set.")
@click.option(
    "--extraction_batch_size",
    default=32,
    show_default=True,
    type=click.IntRange(min=1),
    help="Images per backbone forward pass.",
)
@click.option(
    "--decode_memory_mb",
    default=DEFAULT_DECODE_MEMORY_MB,
    show_default=True,
    type=click.IntRange(min=1),
    help="Memory for decoding images at once (13-29 bytes a pixel by mode, from the header): small images decode "
    "side by side, large ones in turn; one that alone needs more is skipped with a warning.",
)
@click.option(
    "--runtime",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "litert", "tensorflow"]),
    help="What computes bottlenecks: LiteRT on the CPU (the backbone converted once, cached), or TensorFlow; "
    "auto picks TensorFlow where it sees a GPU, else LiteRT.",
)
@click.option(
    "--ray_address",
    default=None,
    metavar="ADDRESS",
    help="Compute the missing bottlenecks on a Ray cluster: auto (the cluster this machine belongs to), "
    "ray://HOST:PORT (a remote one, through Ray Client), HOST:PORT, or local (a private one started here). "
    "--image_dir and --bottleneck_dir must be paths every node sees. Needs retrain[cluster].",
)
@click.option(
    "--bottleneck_layers",
    default="auto",
    show_default=True,
    help="Which layers the bottlenecks come from: final (the last layer, averaged), middle (a middle layer on a "
    "2x2 grid: strokes and where they are), final+middle, or auto: each scored on the validation split (or by "
    "cross-validation); final+middle is kept unless another is ahead by more than one standard error. Backbones "
    "other than EfficientNet-Lite offer final only.",
)
@click.option("--print_misclassified_test_images", is_flag=True, help="List the test images the model gets wrong.")
@click.option("--summaries_dir", help="Write TensorBoard scalars here.")
@click.option(
    "--export",
    default="tflite",
    show_default=True,
    help="What the export holds besides labels and model.json: tflite (always; serve runs it), and any of "
    "tflite_fp16 (model_fp16.tflite, half the size), tflite_int8 (model_int8.tflite, int8 weights, a quarter), "
    "saved_model (TensorFlow Serving) and keras (model.keras, for --base_model), comma-separated.",
)
@click.option("--saved_model_dir", help="Also write the SavedModel (implies --export saved_model) and copy it here.")
@click.option("--output_labels", help="Also copy labels.txt here.")
@click.option("--random_seed", default=0, show_default=True, help="Seed for weights and batch sampling.")
@click.option(
    "--head",
    type=click.Choice(["softmax", "prototype"]),
    default="softmax",
    show_default=True,
    help="softmax: trained layer(s); prototype: nearest class mean of normalised bottlenecks (few-shot, no training).",
)
@click.option(
    "--hidden_units",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="A hidden ReLU layer of this width before the softmax (0: none).",
)
@click.option(
    "--dropout", default=0.0, show_default=True, type=click.FloatRange(0, 1, max_open=True), help="Dropout rate."
)
@click.option(
    "--fine_tune_layers",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="After the head, also train the top N weight layers of the backbone on decoded images.",
)
@click.option(
    "--fine_tune_steps", default=500, show_default=True, type=click.IntRange(min=1), help="Steps of fine-tuning."
)
@click.option(
    "--fine_tune_learning_rate",
    default=0.001,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Fine-tuning step size (SGD, momentum 0.9).",
)
@click.option("--flip_left_right", is_flag=True, help="Augment: mirror training images at random.")
@click.option(
    "--random_crop", default=0.0, show_default=True, type=click.FloatRange(min=0), help="Augment: crop margin, %."
)
@click.option(
    "--random_scale", default=0.0, show_default=True, type=click.FloatRange(min=0), help="Augment: zoom in up to %."
)
@click.option(
    "--random_brightness",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 100),
    help="Augment: scale pixel values by up to ±%.",
)
@click.option(
    "--augmentation_copies",
    type=click.IntRange(min=0),
    help="Augmented copies of each training image, computed once and cached.  [default: 4 with a distortion, else 0]",
)
@click.option(
    "--train_fraction",
    type=click.FloatRange(0, 1, min_open=True),
    help="Train on this fraction of each class's training images (seeded; at least one). Hold-out sets unchanged.",
)
@click.option(
    "--train_images_per_class",
    type=click.IntRange(min=1),
    help="Train on at most this many images per class (seeded). Hold-out sets unchanged.",
)
@click.option(
    "--server",
    metavar="URL",
    help="Train on a `serve --admin_token_file` there instead of here: the images are zipped and sent, progress is "
    "shown as a local run shows it, Ctrl-C cancels the job, and the model is exported and served there as "
    "--model_name's next version. Takes only --model_name and " + ", ".join(f"--{name}" for name in JOB_OPTIONS) + ".",
)
@click.option("--token_file", metavar="FILE", help="With --server: a file holding the server's admin token.")
@click.option("--verbose", is_flag=True, help="Show TensorFlow's logs and tracebacks.")
def main(verbose: bool, server: str | None, token_file: str | None, **flags) -> None:
    """Retrain a pretrained image network's last layer on folders of images, one folder per label."""
    if not flags["image_dir"]:
        raise RetrainError("--image_dir is required (a folder with one sub-folder of images per label)")
    if server or token_file:
        _train_on_server(server, token_file, flags)
        return
    if verbose:
        show_tensorflow_logs()
    _check_training_modules()
    from retrain.augment import Augmentation
    from retrain.export import parse_formats
    from retrain.pipeline import RetrainConfig, run
    from retrain.train import HParams

    augmentation = Augmentation(**{name: flags.pop(name) for name in Augmentation.__dataclass_fields__})
    if flags["augmentation_copies"] is None:
        flags["augmentation_copies"] = DEFAULT_AUGMENTATION_COPIES if augmentation.enabled else 0
    hparam_names = set(HParams.__dataclass_fields__)
    hparams = HParams(**{k: v for k, v in flags.items() if k in hparam_names})
    config = {k: v for k, v in flags.items() if k not in hparam_names}
    config["export"] = parse_formats(config["export"])
    run(RetrainConfig(**config, augmentation=augmentation, hparams=hparams))


def _train_on_server(server: str | None, token_file: str | None, flags: dict) -> None:
    """`--server`: the job goes to the server's job API (retrain.remote), with the job options given on
    the command line; a flag the job API has no field for is a usage error, not silently dropped."""
    if not server or not token_file:
        raise click.UsageError("--server and --token_file go together: the server's URL, a file with its admin token")
    context = click.get_current_context()
    given = [name for name in flags if context.get_parameter_source(name) is ParameterSource.COMMANDLINE]
    local = [name for name in given if name not in REMOTE_FLAGS]
    if local:
        raise click.UsageError(
            f"{', '.join(f'--{name}' for name in local)}: not with --server, whose job API takes only "
            f"--model_name and {', '.join(f'--{name}' for name in JOB_OPTIONS)}"
        )
    options = {name: flags[name] for name in given if name in JOB_OPTIONS}
    remote.train(remote.job_of(flags["image_dir"], flags["model_name"], options), server, token_file)


def entry_point(argv: list[str] | None = None) -> None:
    """Console-script entry: maps errors to one stderr line and the documented exit codes."""
    args = sys.argv[1:] if argv is None else argv
    verbose = "--verbose" in args
    _configure_logging(verbose)
    try:
        main.main(args=args, prog_name="retrain", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.UsageError as e:
        _fail(2, e.format_message(), verbose)
    except remote.JobInterruptedError as e:
        _fail(130, str(e), verbose)
    except RetrainError as e:
        _fail(2, str(e), verbose)
    except (KeyboardInterrupt, click.exceptions.Abort):  # click turns Ctrl-C into Abort
        _fail(130, "interrupted; finished bottlenecks are cached, nothing was exported", verbose)
    except ModuleNotFoundError as e:
        if e.name not in TRAINING_MODULES:
            _fail(1, f"internal error: {type(e).__name__}: {e}", verbose)
        _fail(2, _missing_module(e.name), verbose)
    except Exception as e:
        _fail(1, f"internal error: {type(e).__name__}: {e}", verbose)
    sys.exit(0)


def _check_training_modules() -> None:
    """Fails before any work where the training extra is not installed (the serve image): most of
    these are imported only when a step needs them, which may be minutes in."""
    for name in TRAINING_MODULES:
        if importlib.util.find_spec(name) is None:
            raise RetrainError(_missing_module(name))


def _missing_module(name: str | None) -> str:
    return f"no module named {name!r}: training needs `pip install 'retrain[train]'` (or the retrain image)"


def _fail(code: int, message: str, verbose: bool) -> None:
    if verbose:
        traceback.print_exc()
    print(f"retrain: error: {message}", file=sys.stderr)
    sys.exit(code)


class _LowercaseLevelFormatter(logging.Formatter):
    """`retrain: warning: ...`, in the style of the error line."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(logging.makeLogRecord({**record.__dict__, "levelname": record.levelname.lower()}))


def _configure_logging(verbose: bool) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(_LowercaseLevelFormatter("retrain: %(levelname)s: %(message)s"))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])
    logging.getLogger("retrain").setLevel(logging.INFO)
