"""serve.models.config: TF Serving's --model_config_file (protobuf text format), from real files on disk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serve.models.config import (
    ModelConfig,
    ModelConfigError,
    VersionPolicy,
    parse_model_config,
    read_model_config_file,
)

# As TF Serving's documentation writes one (serving_config.md), with a third model for the third policy.
TF_SERVING_FILE = """\
model_config_list {
  config {
    name: 'my_first_model'
    base_path: '/tmp/my_first_model/'
    model_platform: 'tensorflow'
    model_version_policy {
      specific {
        versions: 42
        versions: 43
      }
    }
    version_labels {
      key: 'stable'
      value: 42
    }
    version_labels {
      key: 'canary'
      value: 43
    }
  }
  config {
    name: 'my_second_model'
    base_path: '/tmp/my_second_model/'
    model_platform: 'tensorflow'
    model_version_policy {
      latest {
        num_versions: 2
      }
    }
  }
  config {
    name: "third.model-v2_0"
    base_path: "/srv/models/third"
    model_platform: "tflite"
    model_version_policy { all {} }
    logging_config {
      log_collector_config { type: "" filename_prefix: "x" }
      sampling_config { sampling_rate: .01 }
      sampling_config { sampling_rate: 1.5e-3 attributes: [-inf, 2E+2, true, ENUM_VALUE] }
    }
  }
}
"""


def _write(folder: Path, text: str | bytes, name: str = "models.config") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(text)
    return path


def _read(folder: Path, text: str | bytes) -> list[ModelConfig]:
    return read_model_config_file(_write(folder, text))


def _config(*lines: str) -> str:
    """A file of one config holding `lines`, the first of them on line 3 (its `{` is on line 2)."""
    return "model_config_list {\n  config {\n" + "".join(f"    {line}\n" for line in lines) + "  }\n}\n"


def _model(*lines: str) -> str:
    """Like `_config`, with a valid name and base_path first (lines 3 and 4); `lines` start on line 5."""
    return _config('name: "m"', 'base_path: "/models/m"', *lines)


def test_tf_serving_file_parses_to_model_configs(tmp_path):
    assert _read(tmp_path, TF_SERVING_FILE) == [
        ModelConfig(
            name="my_first_model",
            base_path=Path("/tmp/my_first_model"),
            policy=VersionPolicy("specific", versions=frozenset({42, 43})),
            version_labels=(("stable", 42), ("canary", 43)),
        ),
        ModelConfig("my_second_model", Path("/tmp/my_second_model"), VersionPolicy("latest", num_versions=2)),
        ModelConfig("third.model-v2_0", Path("/srv/models/third"), VersionPolicy("all")),
    ]


def test_version_for_a_label(tmp_path):
    first = _read(tmp_path, TF_SERVING_FILE)[0]
    assert (first.version_for("stable"), first.version_for("canary")) == (42, 43)
    assert first.version_for("beta") is None
    assert first.version_for("Stable") is None


def test_relative_base_paths_resolve_against_the_file_folder(tmp_path, monkeypatch):
    text = """
    model_config_list {
      config { name: "a" base_path: "models/a" }
      config { name: "b" base_path: "../shared/b" }
      config { name: "c" base_path: "/abs/c" }
    }
    """
    _write(tmp_path / "conf", text)
    monkeypatch.chdir(tmp_path)  # a relative --model_config_file still gives absolute base paths
    a, b, c = read_model_config_file("conf/models.config")
    assert a.base_path.is_absolute() and b.base_path.is_absolute()
    assert a.base_path == tmp_path / "conf" / "models" / "a"
    assert b.base_path.resolve() == (tmp_path / "shared" / "b").resolve()
    assert c.base_path == Path("/abs/c")


def test_parse_model_config_takes_relative_paths_from_relative_to(tmp_path):
    [model] = parse_model_config('model_config_list { config { name: "a" base_path: "a" } }', tmp_path)
    assert model.base_path == tmp_path / "a"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\n\n   \n",
        "# only a comment\n# and another",
        "model_config_list {}",
        "model_config_list: { }",
        "model_config_list < >",
        "model_config_list { config [] }",
        "model_config_list {};",
    ],
)
def test_no_models_is_valid(tmp_path, text):
    assert _read(tmp_path, text) == []


def test_comments_separators_angle_brackets_and_lists(tmp_path):
    text = """\
# a comment line; "quotes" and { braces } in comments are nothing
model_config_list: <  # trailing comment
  config: {
    name: "a", base_path: "/m/a";  # comma and semicolon separators
    model_platform: "tensorflow";
    model_version_policy: < specific < versions: [1, 0x10, 010] > >
    version_labels: [{ key: "stable", value: 1 }, < key: 'canary' value: 16 >]
  },
  config [{ name: 'b' base_path: '/m/b' model_version_policy { latest: {} } }]
  config { name: "c" base_path: "/m/c"
           model_version_policy { latest { num_versions: 0 } } }  # TF Serving serves max(0, 1)
  config { name: "d" base_path: "/m/d" model_version_policy {} }  # nothing chosen: TF Serving's latest
  config { name: "e" base_path: "/m/e" model_version_policy { specific { versions: [] versions: 7 } } }
>
"""
    a, b, c, d, e = _read(tmp_path, text)
    assert a == ModelConfig(
        "a", Path("/m/a"), VersionPolicy("specific", versions=frozenset({1, 16, 8})), (("stable", 1), ("canary", 16))
    )
    assert b.policy == c.policy == d.policy == VersionPolicy("latest", num_versions=1)
    assert e.policy == VersionPolicy("specific", versions=frozenset({7}))


def test_strings_quotes_escapes_and_concatenation(tmp_path):
    text = _config(
        'name: "my" \'_\' "model"',  # adjacent literals join
        r'base_path: "/m/tab\there/nl\n/q\"/s\'/b\\/oct\101/hex\x42/u\u00e9"',
        r"version_labels { key: 'it''s \'ok\'' value: 1 }",
    )
    [model] = _read(tmp_path, text)
    assert model.name == "my_model"
    assert model.base_path == Path("/m/tab\there/nl\n/q\"/s'/b\\/octA/hexB/u\u00e9")
    assert model.version_labels == (("its 'ok'", 1),)


def test_utf8_bom_and_crlf_line_endings(tmp_path):
    text = "\ufeff" + _config('name: "m"', 'base_path: "/m"', "bad: 1").replace("\n", "\r\n")
    with pytest.raises(ModelConfigError, match=r":5: unknown field 'bad' in config"):
        _read(tmp_path, text.encode("utf-8"))


def test_version_policy_defaults_to_latest_one(tmp_path):
    [model] = _read(tmp_path, _config('name: "m"', 'base_path: "/m"'))
    assert model.policy == VersionPolicy() == VersionPolicy("latest", 1)
    assert model.version_labels == ()


ERRORS = [
    # text, line, what the message says
    (_config('name: "unterminated', 'base_path: "/m"'), 3, "unterminated string"),
    (_config('name: "m', '"', 'base_path: "/m"'), 3, "unterminated string"),
    (_config('name: "ends with a backslash\\'), 3, "unterminated string"),
    (_model("= 3"), 5, "unexpected character '='"),
    (_model("// a C++ comment"), 5, "comments start with '#'"),
    (_model("model_platform: \u201ctensorflow\u201d"), 5, "straight quotes"),
    (_model(": 1"), 5, "expected a field name, found ':'"),
    (_model('model_platform "tensorflow"'), 5, "expected ':' or '{' after 'model_platform'"),
    (_model("model_version_policy { specific { versions [1] } }"), 5, "expected ':' after 'versions'"),
    (_model("model_version_policy { specific { versions: [1 2] } }"), 5, "expected ',' or ']'"),
    (_model("model_version_policy { specific { versions: [1,"), 6, "expected a value for 'versions', found '}'"),
    (_model("model_version_policy { specific { versions: - 'x' } }"), 5, "expected a number after '-'"),
    (_model("model_version_policy { specific { versions: -inf } }"), 5, "'versions' takes a number, found -inf"),
    (_model("model_platform:", "}"), 6, "expected a value for 'model_platform', found '}'"),
    ("model_config_list {\n}\n}\n", 3, "unexpected '}': nothing is open"),
    (_model("model_version_policy { all {} >"), 5, "unexpected '>': 'model_version_policy' (line 5) is closed by '}'"),
    ('model_config_list {\n  config {\n    name: "m"\n    base_path: "/m"\n}\n', 1, "'{' of 'model_config_list' is"),
    ('# c\nmodel_config_list {\n\n  config < name: "m" base_path: "/m" }\n', 4, "'config' (line 4) is closed by '>'"),
    ('# c\nmodel_config_list {\n\n  config < name: "m" base_path: "/m"\n', 4, "'<' of 'config' is never closed"),
    ("x " + "{ x " * 40, 1, "nested more than 32 deep"),
    # the schema: fields
    ("\n\nfoo: 1\n", 3, "unknown field 'foo' at the top level"),
    ("model_config_list {\n  configs {}\n}", 2, "unknown field 'configs' in model_config_list"),
    (_model("foo: 1"), 5, "unknown field 'foo' in config"),
    (_model("model_version_policy {", "  latest { count: 2 }", "}"), 6, "unknown field 'count' in latest"),
    (_model("model_version_policy { newest {} }"), 5, "unknown field 'newest' in model_version_policy"),
    (_model("version_labels { key: 'a' value: 1 label: 'b' }"), 5, "unknown field 'label' in version_labels"),
    (_model("model_type: TENSORFLOW"), 5, "model_type is deprecated"),
    ("# custom\ncustom_model_config {\n}\n", 2, "custom_model_config is not supported"),
    ("model_config_list {}\nmodel_config_list {}\n", 2, "'model_config_list' is given twice at the top level"),
    (_model('name: "again"'), 5, "'name' is given twice in config (first on line 3)"),
    (_config('name: ["m"]', 'base_path: "/m"'), 3, "'name' takes one value, not a list"),
    # the schema: types
    (_config("name: 3", 'base_path: "/m"'), 3, "'name' takes a string in quotes, found 3"),
    (_config("name: m", 'base_path: "/m"'), 3, "'name' takes a string in quotes, found m"),
    (_config("name { }", 'base_path: "/m"'), 3, "'name' takes a string in quotes, not { ... }"),
    (
        _model("model_version_policy {", '  specific { versions: "1" }', "}"),
        6,
        "'versions' takes a number, found \"1\"",
    ),
    (_model("model_version_policy { latest { num_versions: 1.5 } }"), 5, "takes a whole number, found 1.5"),
    (_model("model_version_policy { latest { num_versions: 08 } }"), 5, "takes a whole number, found 08"),
    (_model("model_version_policy { latest { num_versions: -1 } }"), 5, "'num_versions' must be 0 or more"),
    (_model("model_version_policy { latest { num_versions: 4294967296 } }"), 5, "'num_versions' is too large"),
    (_model("model_version_policy { specific { versions: -3 } }"), 5, "'versions' must be 0 or more"),
    (_model("model_version_policy { specific { versions: " + "9" * 5000 + " } }"), 5, "'versions' is too large"),
    (_model("model_version_policy: latest"), 5, "'model_version_policy' holds fields"),
    (_model("logging_config: 1"), 5, "'logging_config' holds fields"),
    (_config(r'name: "\xff"', 'base_path: "/m"'), 3, "'name' is not UTF-8 text"),
    (_config(r'name: "\q"'), 3, "unknown escape '\\q'"),
    (_config(r'name: "\x"'), 3, "escape '\\x' needs hex digits"),
    (_config(r'name: "\777"'), 3, "octal escape '\\777' is more than one byte"),
    (_config(r'name: "\ud800"'), 3, "is not a Unicode character"),
    # the schema: values
    (_config('base_path: "/m"'), 2, "config has no name"),
    (_config('name: "m"', "model_platform: 'tensorflow'"), 2, "config of model 'm' has no base_path"),
    (_config('name: "a b"', 'base_path: "/m"'), 3, "model name 'a b' is not valid"),
    (_config('name: "../up"', 'base_path: "/m"'), 3, "model name '../up' is not valid"),
    (_config('name: ""', 'base_path: "/m"'), 3, "model name '' is not valid"),
    (_config(f'name: "{"n" * 129}"', 'base_path: "/m"'), 3, "is not valid"),
    (_config('name: "latest"', 'base_path: "/m"'), 3, "model name 'latest' is reserved"),
    (_config('name: "m"', 'base_path: ""'), 4, "base_path is empty"),
    (_config('name: "m"', r'base_path: "/m\0x"'), 4, "holds a NUL character"),
    (_config('name: "m"', 'base_path: "gs://bucket/m"'), 4, "is a URL"),
    (_model('model_platform: "pytorch"'), 5, "model_platform 'pytorch' is not supported"),
    (_model('model_platform: ""'), 5, "model_platform '' is not supported"),
    (_model("model_version_policy {", "  latest {}", "  all {}", "}"), 7, "has both 'latest' and 'all'"),
    (_model("model_version_policy { specific {} }"), 5, "specific lists no versions"),
    (_model("model_version_policy { specific { versions: [] } }"), 5, "specific lists no versions"),
    (_model("model_version_policy { latest {} }", "model_version_policy { all {} }"), 6, "given twice"),
    (_model("version_labels { key: '' value: 1 }"), 5, "version label is empty"),
    (_model("version_labels { key: 'a/b' value: 1 }"), 5, "version label 'a/b' must be printable and without '/'"),
    (_model(r"version_labels { key: 'a\tb' value: 1 }"), 5, "version label 'a\\tb' must be printable"),
    (_model("version_labels {", "  value: 1", "}"), 5, "version_labels entry has no key"),
    (_model("version_labels {", "  key: 'stable'", "}"), 5, "version label 'stable' has no value"),
    (_model("version_labels { key: 'stable' value: 0 }"), 5, "'value' must be 1 or more, found 0"),
    (_model("version_labels { key: 'stable' value: '1' }"), 5, "'value' takes a number"),
    (
        _model("version_labels { key: 'stable' value: 1 }", "", "version_labels { key: 'stable' value: 2 }"),
        7,
        "version label 'stable' is given twice (first on line 5)",
    ),
    (
        'model_config_list {\n  config { name: "m" base_path: "/a" }\n\n  config { name: "m" base_path: "/b" }\n}\n',
        4,
        "model 'm' is listed twice (first on line 2)",
    ),
]


@pytest.mark.parametrize(("text", "line", "message"), ERRORS)
def test_errors_name_the_file_and_line(tmp_path, text, line, message):
    path = _write(tmp_path, text)
    with pytest.raises(ModelConfigError) as caught:
        read_model_config_file(path)
    error = str(caught.value)
    assert error.startswith(f"{path}:{line}: "), error
    assert message in error, error
    assert error.isprintable(), error  # one line, no control characters


def test_names_from_the_file_are_printed_safely(tmp_path):
    text = _config('name: "evil\x1b]0;title\x07\u202e"', 'base_path: "/m"')
    with pytest.raises(ModelConfigError) as caught:
        _read(tmp_path, text)
    error = str(caught.value)
    assert error.isprintable() and "\\x1b]0;title\\x07\\u202e" in error


def test_long_text_is_shortened_in_messages(tmp_path):
    with pytest.raises(ModelConfigError) as caught:
        _read(tmp_path, _model(f'model_platform: "{"p" * 10_000}"'))
    assert len(str(caught.value)) < 300


def test_parse_errors_name_the_source(tmp_path):
    with pytest.raises(ModelConfigError, match=r"^<model config>:1: unknown field 'x'"):
        parse_model_config("x: 1", tmp_path)
    with pytest.raises(ModelConfigError, match=r"^flag:1: "):
        parse_model_config("x: 1", tmp_path, source="flag")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda folder: folder / "absent.config", "cannot read: No such file or directory"),
        (lambda folder: folder, "cannot read: not a regular file"),
        (lambda folder: Path("/dev/zero"), "cannot read: not a regular file"),
    ],
)
def test_unreadable_files(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(ModelConfigError, match=f"^{path}: {message}$"):
        read_model_config_file(path)


def test_a_file_that_is_not_utf8_gives_the_line(tmp_path):
    path = _write(tmp_path, b"model_config_list {\n  # caf\xe9\n}\n")
    with pytest.raises(ModelConfigError, match=f"^{path}:2: not UTF-8 text \\(byte 0xe9\\)$"):
        read_model_config_file(path)


def test_latest_chooses_the_highest():
    policy = VersionPolicy("latest", num_versions=2)
    assert policy.choose([1, 5, 3, 4]) == {4, 5}
    assert policy.choose(iter([9, 9, 2])) == {2, 9}  # any iterable; duplicates count once
    assert policy.choose([7]) == {7}  # fewer candidates than num_versions
    assert policy.choose([]) == set()
    assert VersionPolicy().choose([10, 2, 33]) == {33}


def test_all_chooses_every_candidate():
    assert VersionPolicy("all").choose([3, 1, 2]) == {1, 2, 3}
    assert VersionPolicy("all").choose([]) == set()


def test_specific_chooses_those_listed_that_exist():
    policy = VersionPolicy("specific", versions=frozenset({1, 4}))
    assert policy.choose([1, 2, 3]) == {1}  # 4 is missing
    assert policy.choose([1, 2, 3, 4]) == {1, 4}
    assert policy.choose([2, 3]) == set()


def test_version_policy_refuses_impossible_values():
    with pytest.raises(ValueError):
        VersionPolicy("newest")
    with pytest.raises(ValueError):
        VersionPolicy("latest", num_versions=0)
    with pytest.raises(ValueError):
        VersionPolicy("specific")
    assert VersionPolicy("specific", versions={2, 3}).versions == frozenset({2, 3})  # type: ignore[arg-type]


# Pieces of the syntax and of the schema, so that mutated files reach past the tokenizer.
PIECES = st.sampled_from(
    [
        "{",
        "}",
        "<",
        ">",
        "[",
        "]",
        ":",
        ";",
        ",",
        "-",
        "#",
        '"',
        "'",
        "\\",
        "\n",
        " ",
        "0x1f",
        "1.5e-3",
        "7",
        "config",
        "name",
        "base_path",
        "model_config_list",
        "model_version_policy",
        "latest",
        "specific",
        "versions",
        '"m"',
        "\x1b",
    ]
)


@settings(max_examples=300, derandomize=True, deadline=None, database=None)
@given(st.lists(st.integers(0, len(TF_SERVING_FILE)) | PIECES, max_size=8), st.text(max_size=30))
def test_any_text_gives_models_or_one_printable_error_line(edits, noise):
    text = TF_SERVING_FILE
    for edit in edits:  # a position cuts the file there and drops a character; a piece is inserted mid-file
        text = text[:edit] + text[edit + 1 :] if isinstance(edit, int) else text[:300] + edit + text[300:]
    for candidate in (text, noise, text[:200] + noise):
        try:
            models = parse_model_config(candidate, Path("/c"))
        except ModelConfigError as e:
            assert str(e).isprintable(), str(e)
        else:
            assert all(isinstance(model, ModelConfig) and model.base_path.is_absolute() for model in models)


def test_the_config_file_catalog_rereads_a_changed_file_and_keeps_its_last_good_models(tmp_path: Path) -> None:
    """serve's --model_config_file: read again when it changes (each poll asks), a broken edit raises
    (the manager then keeps what it serves), and SIGHUP's `reread` parses even an unchanged file."""
    from serve.models.repository import ConfigFile

    path = tmp_path / "models.config"
    path.write_text('model_config_list { config { name: "a" base_path: "a" } }')
    catalog = ConfigFile(path)
    assert [c.name for c in catalog.models()] == ["a"]
    path.write_text('model_config_list { config { name: "a" base_path: "a" } config { name: "b" base_path: "b" } }')
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # a later time, whatever the clock
    assert [c.name for c in catalog.models()] == ["a", "b"]
    assert catalog.models()[1].base_path == tmp_path / "b"
    path.write_text("model_config_list { config { name: ")
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 2 * 10**9))
    with pytest.raises(ModelConfigError, match=r"models\.config:1:"):
        catalog.models()
    catalog.reread()
    with pytest.raises(ModelConfigError):
        catalog.models()
