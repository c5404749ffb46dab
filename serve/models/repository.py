"""Where the served models and their versions are found: the catalogs behind serve's four modes.

    --models_dir models            every folder of models/ is a model: models/<name>/<version>/
    --model_base_path P            one model, TF Serving's way: P/<version>/
    --model_config_file F          TF Serving's model_config_list: names, base paths, version policies
    --model_dir D                  one export folder (or a link that moves), as serve has always read it

A catalog answers two questions, asked again at every poll: which models are there (with their
version policy and labels), and which version folders does one of them have now. A version folder
is `<base_path>/<integer>/`; anything else (hidden staging folders, `latest`, stray files) is no version.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from serve.model_info import LABELS_TXT, MODEL_JSON, TFLITE_FILE
from serve.models import LATEST_LINK, MODEL_NAME
from serve.models.config import ModelConfig, ModelConfigError, read_model_config_file
from serve.runtime import export_version
from serve.text import printable

log = logging.getLogger("serve")


class Catalog(Protocol):
    def models(self) -> list[ModelConfig]:
        """The models to serve now; ModelConfigError if their description cannot be read."""

    def versions(self, config: ModelConfig) -> dict[int, Path]:
        """The version folders of one model found now, by version number."""

    def describe(self) -> str:
        """Where models are looked for, for messages."""


def version_folders(base_path: Path) -> dict[int, Path]:
    """`<base_path>/<n>/` by n: folders (or links to folders) named by a decimal integer, as TF Serving reads them."""
    try:
        entries = list(os.scandir(base_path))
    except OSError:
        return {}
    found = {}
    for entry in entries:
        if entry.name.isascii() and entry.name.isdigit() and _is_dir(entry):
            found[int(entry.name)] = Path(entry.path)
    return found


def fingerprint(directory: Path) -> tuple:
    """What changes when an export lands or is mended in place: where the folder resolves to, and the
    files serving reads (model.json, model.tflite, labels.txt)."""
    resolved = directory.resolve()
    stats = []
    for name in (MODEL_JSON, TFLITE_FILE, LABELS_TXT):
        try:
            stat = (resolved / name).stat()
            stats.append((stat.st_mtime_ns, stat.st_size, stat.st_ino))
        except OSError:
            stats.append(None)
    return resolved, *stats


@dataclass
class ModelsDir:
    """Every model under one folder, retrain's layout: `<models_dir>/<name>/<version>/`. Links at the
    top (retrain's `latest`) and hidden or invalidly named folders are not models. `only` limits it to
    one name (`serve --model_name N`)."""

    root: Path
    only: str | None = None
    _warned: set[str] = field(default_factory=set)

    def models(self) -> list[ModelConfig]:
        try:
            entries = sorted(os.scandir(self.root), key=lambda entry: entry.name)
        except FileNotFoundError:
            return []
        except OSError as e:
            raise ModelConfigError(f"--models_dir {printable(self.root)}: {e.strerror or e}") from e
        found = []
        for entry in entries:
            if self.only is not None and entry.name != self.only:
                continue
            if entry.name.startswith(".") or entry.is_symlink() or not _is_dir(entry):
                continue
            if not MODEL_NAME.fullmatch(entry.name) or entry.name == LATEST_LINK:
                self._warn_once(entry.name, f"{printable(entry.path)} is not a model name; skipped")
                continue
            if (Path(entry.path) / MODEL_JSON).exists():
                self._warn_once(
                    entry.name,
                    f"{printable(entry.path)} is an export, not a model folder of numbered versions; serve it "
                    f"with --model_dir, or move it to {printable(self.root)}/<name>/1",
                )
                continue
            found.append(ModelConfig(entry.name, Path(entry.path)))
        return found

    def versions(self, config: ModelConfig) -> dict[int, Path]:
        return version_folders(config.base_path)

    def describe(self) -> str:
        return str(self.root if self.only is None else self.root / self.only)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s", message)


@dataclass
class BasePaths:
    """Models listed up front (`--model_name N --model_base_path P`)."""

    configs: list[ModelConfig]

    def models(self) -> list[ModelConfig]:
        return list(self.configs)

    def versions(self, config: ModelConfig) -> dict[int, Path]:
        return version_folders(config.base_path)

    def describe(self) -> str:
        return ", ".join(str(config.base_path) for config in self.configs)


@dataclass
class ConfigFile:
    """TF Serving's `--model_config_file`, read again when it changes. A file that no longer parses
    is logged and the models it last described stay served."""

    path: Path
    _stamp: tuple | None = None
    _configs: list[ModelConfig] = field(default_factory=list)

    def models(self) -> list[ModelConfig]:
        try:
            stat = self.path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        except OSError:
            stamp = None
        if stamp != self._stamp or stamp is None:
            configs = read_model_config_file(self.path)  # ModelConfigError: the caller keeps what it has
            self._stamp, self._configs = stamp, configs
        return list(self._configs)

    def reread(self) -> None:
        """Forget the stamp, so the next `models()` parses the file again (SIGHUP)."""
        self._stamp = None

    def versions(self, config: ModelConfig) -> dict[int, Path]:
        return version_folders(config.base_path)

    def describe(self) -> str:
        return str(self.path)


@dataclass
class SingleExport:
    """One export folder served under one name (`--model_dir`): its version is its folder's number
    (`models/digits/3`) or model.json's modification time. A link that moves to another export, or
    an export mended in place, is a new version to load."""

    directory: Path
    name: str

    def models(self) -> list[ModelConfig]:
        return [ModelConfig(self.name, self.directory)]

    def versions(self, config: ModelConfig) -> dict[int, Path]:
        resolved = self.directory.resolve()
        if not resolved.is_dir():
            return {}
        try:  # the folder the link points at now: what a refusal names
            return {export_version(resolved): resolved}
        except OSError:  # no model.json: offered all the same (by the folder's time), so loading says what is wrong
            return {int(resolved.stat().st_mtime): resolved}

    def describe(self) -> str:
        return str(self.directory)


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False
