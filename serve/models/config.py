"""TensorFlow Serving's `--model_config_file`, read as TF Serving reads it, so a TF Serving user's file
works unchanged with `serve --model_config_file`.

The file is a ModelServerConfig in protobuf text format. TF Serving's descriptors need TensorFlow, so
this is a small hand-written reader in three steps: characters -> tokens (`_tokenize`); tokens -> a
tree of fields that knows only the syntax (`_Parser`); the tree -> `ModelConfig`s, which is where the
schema lives (`_server_config` and the readers below it). Every mistake is a ModelConfigError of one
line naming the file and line; text from the file is shown through `serve.text.printable`.
"""

from __future__ import annotations

import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from serve.models import LATEST_LINK, MODEL_NAME
from serve.text import is_printable, printable

_PLATFORMS = ("tensorflow", "tflite")  # model_platform values accepted, and ignored: the export says the runtime

_POLICY_KINDS = ("latest", "specific", "all")

_INT64_MAX = 2**63 - 1  # versions and label values are int64 in TF Serving's protos
_UINT32_MAX = 2**32 - 1  # latest.num_versions is a uint32
_MAX_DEPTH = 32  # the schema nests 4 deep; far deeper is a mistake, or an attack on the stack
_SHOWN = 80  # characters of the file's text shown in one message


class ModelConfigError(ValueError):
    """One readable line: '<file>:<line>: <what is wrong>'."""


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions of a model to serve: TF Serving's ServableVersionPolicy, latest 1 by default."""

    kind: str = "latest"  # "latest" | "specific" | "all"
    num_versions: int = 1  # for latest (>= 1)
    versions: frozenset[int] = frozenset()  # for specific (non-empty)

    def __post_init__(self) -> None:
        object.__setattr__(self, "versions", frozenset(self.versions))
        if self.kind not in _POLICY_KINDS:
            raise ValueError(f"version policy kind {self.kind!r} is not one of {_POLICY_KINDS}")
        if self.kind == "latest" and self.num_versions < 1:
            raise ValueError(f"latest needs num_versions >= 1, got {self.num_versions}")
        if self.kind == "specific" and not self.versions:
            raise ValueError("specific needs at least one version")

    def choose(self, candidates: Iterable[int]) -> set[int]:
        """The versions among `candidates` this policy serves: latest -> the num_versions highest; all -> all;
        specific -> those listed that exist."""
        found = set(candidates)
        if self.kind == "all":
            return found
        if self.kind == "specific":
            return found & self.versions
        return set(sorted(found, reverse=True)[: self.num_versions])


@dataclass(frozen=True)
class ModelConfig:
    """One `config { ... }`: a model's name, the folder of its numbered versions, which of them to serve,
    and the labels (such as "stable") that name versions in requests."""

    name: str
    base_path: Path  # absolute (relative paths resolved against the config file's folder)
    policy: VersionPolicy = VersionPolicy()  # frozen, so one shared default is safe
    version_labels: tuple[tuple[str, int], ...] = ()  # (label, version) pairs, in file order

    def version_for(self, label: str) -> int | None:
        """The version `label` names (TF Serving's /labels/<label>), or None for a label not configured."""
        return dict(self.version_labels).get(label)


def parse_model_config(text: str, relative_to: Path, source: str = "<model config>") -> list[ModelConfig]:
    """The models `text` configures, in file order; a relative base_path is taken from `relative_to` (the
    config file's folder, so a config can sit beside its models), where TF Serving would refuse it."""
    try:
        tree = _Parser(_tokenize(text)).file()
        return _server_config(tree, Path(relative_to).absolute())
    except _LineError as problem:
        raise ModelConfigError(f"{printable(source)}:{problem.line}: {problem.message}") from None


def read_model_config_file(path: str | Path) -> list[ModelConfig]:
    """Reads and parses; an unreadable file (missing, not UTF-8, a directory) is a ModelConfigError too."""
    path = Path(path)
    shown = printable(str(path))
    try:
        # A device or FIFO would never end (or block forever): refuse all but regular files before opening.
        if not stat.S_ISREG(path.stat().st_mode):
            raise ModelConfigError(f"{shown}: cannot read: not a regular file")
        data = path.read_bytes()
    except OSError as e:
        raise ModelConfigError(f"{shown}: cannot read: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ModelConfigError(f"{shown}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x})") from None
    return parse_model_config(text.removeprefix("\ufeff"), path.parent, str(path))


class _LineError(Exception):
    """A mistake at a line; parse_model_config adds the file's name and makes it a ModelConfigError."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def _shown(text: str) -> str:
    """The file's text as it may appear in a message: escaped to one visible line, and short."""
    return printable(text[:_SHOWN]) + ("..." if len(text) > _SHOWN else "")


# --- characters -> tokens -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Token:
    kind: str  # "name", "number", "string", "symbol" or "end"
    text: str  # as written in the file
    line: int
    data: bytes = b""  # a string's bytes, escapes applied


_SKIPPED = re.compile(r"(?:[ \t\r\n\v\f]+|#[^\n]*)+")  # whitespace and comments
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Integers and floats (1, 0x1F, .5, 1.5e-3): whether it is an integer is decided where one is expected.
_NUMBER = re.compile(r"\.?[0-9](?:[0-9A-Za-z_.]|(?<=[eE])[-+])*")
_SYMBOLS = frozenset("{}<>[]:,;-")
_HINTS = {
    "/": " (comments start with '#')",
    "=": " (a field is written name: value)",
    **dict.fromkeys("\u201c\u201d\u2018\u2019", " (strings need straight quotes, \" or ')"),  # pasted from a page
}
_ESCAPES = {
    "n": b"\n",
    "t": b"\t",
    "r": b"\r",
    "a": b"\a",
    "b": b"\b",
    "f": b"\f",
    "v": b"\v",
    "\\": b"\\",
    "'": b"'",
    '"': b'"',
    "?": b"?",
}
_OCTAL_ESCAPE = re.compile(r"[0-7]{1,3}")
_HEX_ESCAPE = re.compile(r"x([0-9A-Fa-f]{1,2})|u([0-9A-Fa-f]{4})|U([0-9A-Fa-f]{8})")


def _tokenize(text: str) -> list[_Token]:
    """`text` as tokens, ending with one "end" token (on the last token's line, where a reader looks)."""
    tokens: list[_Token] = []
    line, at = 1, 0
    while at < len(text):
        if skipped := _SKIPPED.match(text, at):
            line += skipped.group().count("\n")
            at = skipped.end()
            continue
        char = text[at]
        if char in "\"'":
            token, at = _string(text, at, line)
        elif match := _NAME.match(text, at):
            token = _Token("name", match.group(), line)
            at = match.end()
        elif match := _NUMBER.match(text, at):
            token = _Token("number", match.group(), line)
            at = match.end()
        elif char in _SYMBOLS:
            token = _Token("symbol", char, line)
            at += 1
        else:
            raise _LineError(line, f"unexpected character '{printable(char)}'{_HINTS.get(char, '')}")
        tokens.append(token)
    tokens.append(_Token("end", "", tokens[-1].line if tokens else 1))
    return tokens


def _string(text: str, start: int, line: int) -> tuple[_Token, int]:
    """The string literal that starts at `start`, and where it ends; protobuf's C-style escapes applied."""
    quote = text[start]
    data = bytearray()
    at = start + 1
    while True:
        if at >= len(text) or text[at] == "\n":
            raise _LineError(line, "unterminated string: a string must end, with its opening quote, on its line")
        char = text[at]
        if char == quote:
            return _Token("string", text[start : at + 1], line, bytes(data)), at + 1
        if char != "\\":
            data += char.encode("utf-8", "surrogatepass")  # a lone surrogate fails the UTF-8 check later
            at += 1
            continue
        at += 1
        escape = text[at] if at < len(text) else "\n"
        if escape in _ESCAPES:
            data += _ESCAPES[escape]
            at += 1
        elif octal := _OCTAL_ESCAPE.match(text, at):
            if int(octal.group(), 8) > 0xFF:
                raise _LineError(line, f"octal escape '\\{octal.group()}' is more than one byte")
            data.append(int(octal.group(), 8))
            at = octal.end()
        elif hexadecimal := _HEX_ESCAPE.match(text, at):
            if hexadecimal.group(1):
                data.append(int(hexadecimal.group(1), 16))
            else:
                code = int(hexadecimal.group(2) or hexadecimal.group(3), 16)
                if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                    raise _LineError(line, f"escape '\\{hexadecimal.group()}' is not a Unicode character")
                data += chr(code).encode("utf-8")
            at = hexadecimal.end()
        elif escape == "\n":
            raise _LineError(line, "unterminated string: a string must end, with its opening quote, on its line")
        elif escape in "xuU":
            raise _LineError(line, f"escape '\\{escape}' needs hex digits after it")
        else:
            raise _LineError(line, f"unknown escape '\\{printable(escape)}' in a string")


def _describe(token: _Token) -> str:
    if token.kind == "end":
        return "the end of the file"
    if token.kind in ("string", "number"):
        return f"the {token.kind} {_shown(token.text)}"
    return f"'{_shown(token.text)}'"


# --- tokens -> a tree of fields (syntax only) ------------------------------------------------------------


@dataclass(frozen=True)
class _Value:
    """A scalar as written: a string (its bytes in `data`), a number (its text), or a bare name."""

    kind: str  # "string", "number" or "name"
    text: str
    line: int
    data: bytes = b""


@dataclass(frozen=True)
class _Message:
    line: int  # of its '{' or '<'
    fields: tuple[_Field, ...]


@dataclass(frozen=True)
class _Field:
    name: str
    line: int  # of its name
    value: _Value | _Message
    in_list: bool = False  # written as one item of `name: [a, b]`


_CLOSER = {"{": "}", "<": ">"}


class _Parser:
    """Protobuf text format's syntax: `name: value`, `name { ... }` (or `name: {`, or `<` `>`), lists
    `name: [a, b]` and `name [{ ... }, { ... }]`; fields separated by whitespace, ',' or ';'; adjacent strings
    joined."""

    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.at = 0

    def file(self) -> _Message:
        return _Message(1, tuple(self._fields(None, "", 0)))

    def _peek(self) -> _Token:
        return self.tokens[self.at]

    def _next(self) -> _Token:
        token = self.tokens[self.at]
        if token.kind != "end":
            self.at += 1
        return token

    def _take(self, *symbols: str) -> _Token | None:
        """The next token if it is one of `symbols` (consumed), else None."""
        token = self._peek()
        if token.kind == "symbol" and token.text in symbols:
            self.at += 1
            return token
        return None

    def _fields(self, opener: _Token | None, name: str, depth: int) -> list[_Field]:
        """Fields up to the end of the file (opener None) or up to the `}` or `>` that matches `opener`."""
        closer = _CLOSER[opener.text] if opener else None
        fields: list[_Field] = []
        while True:
            token = self._peek()
            if token.kind == "end":
                if opener is None:
                    return fields
                raise _LineError(
                    opener.line,
                    f"'{opener.text}' of '{name}' is never closed: no '{closer}' before the end of the file",
                )
            if closer and self._take(closer):
                return fields
            if token.kind == "symbol" and token.text in "}>]":
                if opener is None:
                    raise _LineError(token.line, f"unexpected '{token.text}': nothing is open here")
                raise _LineError(
                    token.line, f"unexpected '{token.text}': '{name}' (line {opener.line}) is closed by '{closer}'"
                )
            fields += self._field(depth)
            self._take(",", ";")

    def _field(self, depth: int) -> list[_Field]:
        token = self._next()
        if token.kind != "name":
            raise _LineError(token.line, f"expected a field name, found {_describe(token)}")
        name = token.text
        colon = self._take(":")
        following = self._peek()
        if following.kind == "symbol" and following.text in _CLOSER:
            return [_Field(name, token.line, self._message(name, depth))]
        if self._take("["):
            items = self._list(name, depth)
            if not colon and any(isinstance(item, _Value) for item in items):  # only messages may omit it
                raise _LineError(token.line, f"expected ':' after '{name}' (a list of values is {name}: [a, b])")
            return [_Field(name, token.line, item, in_list=True) for item in items]
        if not colon:
            raise _LineError(following.line, f"expected ':' or '{{' after '{name}', found {_describe(following)}")
        return [_Field(name, token.line, self._value(name))]

    def _message(self, name: str, depth: int) -> _Message:
        opener = self._next()
        if depth >= _MAX_DEPTH:
            raise _LineError(opener.line, f"'{name}' is nested more than {_MAX_DEPTH} deep")
        return _Message(opener.line, tuple(self._fields(opener, name, depth + 1)))

    def _list(self, name: str, depth: int) -> list[_Value | _Message]:
        """The items of `[a, b]`, its '[' already taken."""
        items: list[_Value | _Message] = []
        if self._take("]"):
            return items
        while True:
            following = self._peek()
            is_message = following.kind == "symbol" and following.text in _CLOSER
            items.append(self._message(name, depth) if is_message else self._value(name))
            if self._take("]"):
                return items
            if not self._take(","):
                token = self._peek()
                raise _LineError(token.line, f"expected ',' or ']' in the list of '{name}', found {_describe(token)}")

    def _value(self, name: str) -> _Value:
        token = self._next()
        if token.kind == "string":
            parts = [token]
            while self._peek().kind == "string":
                parts.append(self._next())
            text = " ".join(part.text for part in parts)
            return _Value("string", text, token.line, b"".join(part.data for part in parts))
        if token.kind == "symbol" and token.text == "-":
            number = self._next()  # a number, or a name such as inf (the floats of logging_config)
            if number.kind not in ("number", "name"):
                raise _LineError(number.line, f"expected a number after '-' for '{name}', found {_describe(number)}")
            return _Value(number.kind, f"-{number.text}", token.line)
        if token.kind in ("number", "name"):
            return _Value(token.kind, token.text, token.line)
        raise _LineError(token.line, f"expected a value for '{name}', found {_describe(token)}")


# --- the tree -> ModelConfigs (TF Serving's schema) ------------------------------------------------------

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_INTEGER = {16: re.compile(r"0[xX][0-9A-Fa-f]+"), 8: re.compile(r"0[0-7]+"), 10: re.compile(r"0|[1-9][0-9]*")}
_CONFIG_FIELDS = ("name", "base_path", "model_platform", "model_version_policy", "logging_config")


def _server_config(tree: _Message, relative_to: Path) -> list[ModelConfig]:
    fields = _group(tree, "at the top level", singular=("model_config_list", "custom_model_config"))
    if "custom_model_config" in fields:
        raise _LineError(
            fields["custom_model_config"][0].line,
            "custom_model_config is not supported: list the models in model_config_list { config { ... } }",
        )
    if "model_config_list" not in fields:
        return []
    config_list = _message_of(fields["model_config_list"][0])
    models: list[ModelConfig] = []
    name_lines: dict[str, int] = {}
    for config in _group(config_list, "in model_config_list", repeated=("config",)).get("config", []):
        model, name_line = _model(_message_of(config), relative_to)
        if model.name in name_lines:
            raise _LineError(
                name_line, f"model '{model.name}' is listed twice (first on line {name_lines[model.name]})"
            )
        name_lines[model.name] = name_line
        models.append(model)
    return models


def _model(config: _Message, relative_to: Path) -> tuple[ModelConfig, int]:
    """The model one `config { ... }` describes, and the line of its name."""
    for field in config.fields:
        if field.name == "model_type":
            raise _LineError(field.line, 'model_type is deprecated in TF Serving: write model_platform: "tensorflow"')
    fields = _group(config, "in config", singular=_CONFIG_FIELDS, repeated=("version_labels",))
    if "name" not in fields:
        raise _LineError(config.line, "config has no name")
    name_field = fields["name"][0]
    name = _string_of(name_field)
    if name == LATEST_LINK:
        raise _LineError(
            name_field.line, f"model name '{LATEST_LINK}' is reserved (retrain's link to its newest export)"
        )
    if not MODEL_NAME.fullmatch(name):
        raise _LineError(
            name_field.line, f"model name '{_shown(name)}' is not valid (names match {MODEL_NAME.pattern})"
        )
    if "base_path" not in fields:
        raise _LineError(config.line, f"config of model '{name}' has no base_path")
    base_path = _base_path(fields["base_path"][0], relative_to)
    if "model_platform" in fields:
        platform_field = fields["model_platform"][0]
        platform = _string_of(platform_field)
        if platform not in _PLATFORMS:
            raise _LineError(
                platform_field.line,
                f"model_platform '{_shown(platform)}' is not supported (use {' or '.join(map(repr, _PLATFORMS))})",
            )
    has_policy = "model_version_policy" in fields
    policy = _policy(_message_of(fields["model_version_policy"][0])) if has_policy else VersionPolicy()
    if "logging_config" in fields:
        _message_of(fields["logging_config"][0])  # TF Serving's request logging: read, and not done here
    labels = _version_labels(fields.get("version_labels", []))
    model = ModelConfig(name, base_path, policy, labels)
    return model, name_field.line


def _base_path(field: _Field, relative_to: Path) -> Path:
    text = _string_of(field)
    if not text:
        raise _LineError(field.line, "base_path is empty")
    if "\0" in text:
        raise _LineError(field.line, f"base_path '{_shown(text)}' holds a NUL character")
    if _URL.match(text):
        raise _LineError(field.line, f"base_path '{_shown(text)}' is a URL: serve reads models from local folders only")
    return relative_to / text  # an absolute `text` replaces `relative_to`


def _policy(policy: _Message) -> VersionPolicy:
    """TF Serving's ServableVersionPolicy; with none of its three chosen, TF Serving serves the latest one."""
    choices = _group(policy, "in model_version_policy", singular=_POLICY_KINDS)
    if len(choices) > 1:
        first, second = list(choices)[:2]
        raise _LineError(choices[second][0].line, f"model_version_policy has both '{first}' and '{second}': choose one")
    if not choices:
        return VersionPolicy()
    [(kind, [choice])] = choices.items()
    body = _message_of(choice)
    if kind == "all":
        _group(body, "in all")
        return VersionPolicy("all")
    if kind == "latest":
        fields = _group(body, "in latest", singular=("num_versions",))
        # TF Serving serves max(num_versions, 1): an absent or zero count means one version.
        count = _integer_of(fields["num_versions"][0], 0, _UINT32_MAX) if "num_versions" in fields else 0
        return VersionPolicy("latest", num_versions=max(count, 1))
    listed = _group(body, "in specific", repeated=("versions",)).get("versions", [])
    if not listed:
        raise _LineError(body.line, "specific lists no versions (write versions: N for each version to serve)")
    return VersionPolicy("specific", versions=frozenset(_integer_of(field, 0, _INT64_MAX) for field in listed))


def _version_labels(entries: list[_Field]) -> tuple[tuple[str, int], ...]:
    """The map `version_labels { key: "stable" value: 1 }`, one entry per occurrence, in file order."""
    labels: list[tuple[str, int]] = []
    label_lines: dict[str, int] = {}
    for entry in entries:
        body = _message_of(entry)
        fields = _group(body, "in version_labels", singular=("key", "value"))
        if "key" not in fields:
            raise _LineError(body.line, "version_labels entry has no key (the label)")
        key = fields["key"][0]
        label = _string_of(key)
        if not label:
            raise _LineError(key.line, "version label is empty")
        if "/" in label or not is_printable(label):
            raise _LineError(key.line, f"version label '{_shown(label)}' must be printable and without '/'")
        if label in label_lines:
            raise _LineError(key.line, f"version label '{label}' is given twice (first on line {label_lines[label]})")
        if "value" not in fields:
            raise _LineError(body.line, f"version label '{label}' has no value (the version it names)")
        labels.append((label, _integer_of(fields["value"][0], 1, _INT64_MAX)))
        label_lines[label] = key.line
    return tuple(labels)


def _group(
    message: _Message, where: str, singular: Iterable[str] = (), repeated: Iterable[str] = ()
) -> dict[str, list[_Field]]:
    """`message`'s fields by name, in file order; an unknown name, or a singular field given twice or as a
    list, is a _LineError (as in protobuf's own text parser)."""
    singular, repeated = tuple(singular), tuple(repeated)
    groups: dict[str, list[_Field]] = {}
    for field in message.fields:
        if field.name not in singular + repeated:
            known = ", ".join(singular + repeated) or "none"
            raise _LineError(field.line, f"unknown field '{_shown(field.name)}' {where} (known fields: {known})")
        if field.name in singular and field.in_list:
            raise _LineError(field.line, f"'{field.name}' takes one value, not a list")
        if field.name in singular and field.name in groups:
            first = groups[field.name][0].line
            raise _LineError(field.line, f"'{field.name}' is given twice {where} (first on line {first})")
        groups.setdefault(field.name, []).append(field)
    return groups


def _message_of(field: _Field) -> _Message:
    if isinstance(field.value, _Message):
        return field.value
    raise _LineError(field.value.line, f"'{field.name}' holds fields: write {field.name} {{ ... }}")


def _scalar_of(field: _Field, kind: str, wanted: str) -> _Value:
    value = field.value
    if isinstance(value, _Message):
        raise _LineError(value.line, f"'{field.name}' takes {wanted}, not {{ ... }}")
    if value.kind != kind:
        raise _LineError(value.line, f"'{field.name}' takes {wanted}, found {_shown(value.text)}")
    return value


def _string_of(field: _Field) -> str:
    value = _scalar_of(field, "string", "a string in quotes")
    try:
        return value.data.decode("utf-8")
    except UnicodeDecodeError:
        raise _LineError(value.line, f"'{field.name}' is not UTF-8 text: {_shown(value.text)}") from None


def _integer_of(field: _Field, low: int, high: int) -> int:
    value = _scalar_of(field, "number", "a number")
    number = _integer(value.text)
    if number is None:
        raise _LineError(value.line, f"'{field.name}' takes a whole number, found {_shown(value.text)}")
    if number < low:
        raise _LineError(value.line, f"'{field.name}' must be {low} or more, found {number}")
    if number > high:
        raise _LineError(value.line, f"'{field.name}' is too large: {_shown(value.text)} (at most {high})")
    return number


def _integer(text: str) -> int | None:
    """A decimal, 0x hex or 0-led octal integer, as protobuf writes them; None for anything else."""
    sign, digits = (-1, text[1:]) if text.startswith("-") else (1, text)
    for base, pattern in _INTEGER.items():
        if pattern.fullmatch(digits):
            # Past every field's range; and int() of thousands of digits is slow (and refused past 4300).
            return sign * (2**64 if len(digits) > 64 else int(digits, base))
    return None
