"""Names from strangers, made safe to print: file and folder names, URL paths, upload file names.

A name is whatever bytes its sender chose. Printed raw, an ESC or OSC sequence retitles or recolours
the terminal, a CR or newline forges a log line, a right-to-left override reverses what follows.
`printable` writes every such character as a Python-style escape, so what is printed is one line of
visible text that still tells the reader which bytes the name held.
"""

from __future__ import annotations

import os

_SURROGATE_ESCAPES = range(0xDC80, 0xDD00)  # os.fsdecode's stand-ins for bytes that are not UTF-8
_SHORT = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str | bytes | os.PathLike) -> str:
    """`text` with control, format, separator and undecodable characters (and backslashes) escaped."""
    if isinstance(text, os.PathLike):
        text = os.fspath(text)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    return "".join(_escape(character) for character in text)


def is_printable(text: str) -> bool:
    """True if `printable` would leave `text` as it is."""
    return printable(text) == text


def _escape(character: str) -> str:
    if character in _SHORT:
        return _SHORT[character]
    if character.isprintable():
        return character
    code = ord(character)
    if code in _SURROGATE_ESCAPES:
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
