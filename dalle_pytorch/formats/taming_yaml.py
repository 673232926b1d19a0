"""A strict reader for the YAML that taming-transformers configs are written in (no PyYAML needed).

taming's `.yaml` files (the repository's `configs/*.yaml` and the `model.yaml` / `*.config.yml`
files shipped next to its checkpoints, written by OmegaConf) use a small part of YAML:

    model:                          # block mappings, nested by indentation (spaces)
      base_learning_rate: 4.5e-06   # ints, floats, bools (true/false/True/False), null / ~
      target: taming.models.vqgan.VQModel    # plain strings; 'single' and "double" quoted ones
      params:
        ch_mult: [ 1,1,2,2,4]       # flow lists (of scalars or flow lists)
        attn_resolutions:           # block lists, indented or at the key's own indentation
        - 16

Everything else is refused with `file:line: reason` rather than guessed: anchors and aliases,
tags, block scalars (| >), multi-line plain scalars, flow mappings other than `{}`, complex keys,
mappings inside lists, several documents, tabs in indentation, duplicate keys, and the scalars
whose meaning differs between YAML versions (yes/no/on/off, 0x1f, 0o17, 017, 1_000, 1:30).

Scalars resolve like OmegaConf (which DALLE-pytorch used to read these files): `1e-6`, `1.0e5`
and `-.5` are floats, where PyYAML's YAML 1.1 rules make them strings; every other accepted
scalar means the same to both (tests compare with PyYAML). Dates (2021-01-01) are refused too.
"""
from __future__ import annotations

import math
import os
import re
from typing import Any, Optional

from dalle_pytorch.formats.files import read_bytes

__all__ = ["YamlSubsetError", "parse_yaml_subset", "read_yaml_subset", "MAX_CONFIG_BYTES"]

MAX_CONFIG_BYTES = 1 << 20  # a taming config is ~1 KB; anything near this is not one
MAX_DEPTH = 32

_INT = re.compile(r"[-+]?(0|[1-9][0-9]*)")
_FLOAT = re.compile(r"[-+]?([0-9]+\.[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?|[-+]?[0-9]+[eE][-+]?[0-9]+")
_SPECIAL_FLOATS = {".inf": math.inf, "+.inf": math.inf, "-.inf": -math.inf, ".nan": math.nan}
# YAML 1.1 (PyYAML) reads these as numbers or bools, YAML 1.2 as strings or other numbers: refused
_AMBIGUOUS_NUMBER = re.compile(r"[-+]?(0[0-9_]+|0[xXoObB][0-9a-fA-F_]*|[0-9][0-9_]*(:[0-5]?[0-9])+(\.[0-9_]*)?"
                               r"|[0-9][0-9_]*_[0-9_]*(\.[0-9_]*)?([eE][-+]?[0-9]+)?|[0-9_]*\.[0-9_]*_[0-9_]*)")
_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}([Tt ].*)?")
_AMBIGUOUS_BOOLS = {"yes", "no", "on", "off", "y", "n"}
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-/]*")
_INDICATORS = {"&": "anchors", "*": "aliases", "!": "tags", "|": "block scalars", ">": "block scalars",
               "%": "directives", "@": "reserved characters", "`": "reserved characters", "?": "complex keys"}


class YamlSubsetError(ValueError):
    """A YAML text outside the subset taming configs use, or malformed; the message names file:line."""


class _Line:
    __slots__ = ("number", "indent", "text")

    def __init__(self, number: int, indent: int, text: str):
        self.number, self.indent, self.text = number, indent, text


def _strip_comment(text: str) -> str:
    """`text` without a trailing ` # comment` (a # outside quotes, at the start or after a space)."""
    quote = None
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"" and (i == 0 or text[i - 1] in " [,:-"):
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1] in " \t"):
            return text[:i].rstrip()
    return text.rstrip()


class _Parser:
    def __init__(self, text: str, source: str):
        self.source = source
        self.lines: list[_Line] = []
        seen_content = False
        for number, raw in enumerate(text.splitlines(), start=1):
            body = raw.lstrip(" ")
            if body.strip() and "\t" in raw[: len(raw) - len(raw.lstrip(" \t"))]:
                raise self.error(number, "tabs in indentation are not allowed in YAML")
            content = _strip_comment(body)
            if not content:
                continue
            if content in ("---", "...") or content.startswith(("--- ", "... ")):
                if content == "---" and not seen_content:
                    seen_content = True  # one leading document marker is harmless
                    continue
                raise self.error(number, "several YAML documents (--- / ...) are not supported")
            if content.startswith("%"):
                raise self.error(number, "YAML directives (%) are not supported")
            seen_content = True
            self.lines.append(_Line(number, len(raw) - len(body), content))
        self.pos = 0

    def error(self, line: int, message: str) -> YamlSubsetError:
        return YamlSubsetError(f"{self.source}:{line}: {message}")

    def peek(self) -> Optional[_Line]:
        return self.lines[self.pos] if self.pos < len(self.lines) else None

    # -- documents and blocks ----------------------------------------------------------------------

    def document(self) -> Any:
        first = self.peek()
        if first is None:
            return None
        if first.indent != 0:
            raise self.error(first.number, "the document must start at column 0")
        value = self.block(0, depth=0)
        rest = self.peek()
        if rest is not None:
            raise self.error(rest.number, "unexpected indentation")
        return value

    def block(self, indent: int, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise self.error(self.peek().number, f"nesting deeper than {MAX_DEPTH} levels")
        line = self.peek()
        if _is_item(line.text):
            return self.sequence(indent, depth)
        if self.split_key(line) is None:
            # a lone scalar as a whole block (e.g. a document that is just `42`)
            self.pos += 1
            value = self.inline(line.text, line.number)
            nxt = self.peek()
            if nxt is not None and nxt.indent >= indent and depth > 0:
                raise self.error(nxt.number, "multi-line plain scalars are not supported")
            return value
        return self.mapping(indent, depth)

    def mapping(self, indent: int, depth: int) -> dict:
        out: dict = {}
        while True:
            line = self.peek()
            if line is None or line.indent < indent:
                return out
            if line.indent > indent:
                raise self.error(line.number, "unexpected indentation")
            if _is_item(line.text):
                raise self.error(line.number, "a list item where a mapping key was expected")
            split = self.split_key(line)
            if split is None:
                raise self.error(line.number, f"expected 'key: value', got {line.text!r}")
            key, rest = split
            if key in out:
                raise self.error(line.number, f"duplicate key {key!r}")
            self.pos += 1
            if rest:
                out[key] = self.inline(rest, line.number)
                nxt = self.peek()
                if nxt is not None and nxt.indent > indent:
                    raise self.error(nxt.number, "multi-line values are not supported (a value already "
                                                 "follows the key on the line before)")
                continue
            nxt = self.peek()
            if nxt is not None and nxt.indent > indent:
                out[key] = self.block(nxt.indent, depth + 1)
            elif nxt is not None and nxt.indent == indent and _is_item(nxt.text):
                out[key] = self.sequence(indent, depth + 1)  # a list at the key's own indentation
            else:
                out[key] = None
        return out

    def sequence(self, indent: int, depth: int) -> list:
        out: list = []
        while True:
            line = self.peek()
            if line is None or line.indent < indent or (line.indent == indent and not _is_item(line.text)):
                return out
            if line.indent > indent:
                raise self.error(line.number, "unexpected indentation")
            rest = line.text[1:].lstrip(" ")
            self.pos += 1
            if not rest:
                nxt = self.peek()
                if nxt is not None and nxt.indent > indent:
                    out.append(self.block(nxt.indent, depth + 1))
                else:
                    out.append(None)
                continue
            if _is_item(rest):
                raise self.error(line.number, "nested block lists on one line ('- - x') are not supported")
            if self.split_key(_Line(line.number, 0, rest)) is not None:
                raise self.error(line.number, "mappings inside lists are not supported")
            out.append(self.inline(rest, line.number))
            nxt = self.peek()
            if nxt is not None and nxt.indent > indent:
                raise self.error(nxt.number, "multi-line list items are not supported")

    # -- keys and inline values ----------------------------------------------------------------------

    def split_key(self, line: _Line) -> Optional[tuple[str, str]]:
        """(key, rest of the line) for `key: rest` / `key:`, or None when the line is not a mapping entry."""
        text = line.text
        if text[0] in "'\"":
            end = _quoted_end(text, 0)
            if end is None:
                raise self.error(line.number, "unterminated quoted string")
            after = text[end + 1:]
            if not (after == ":" or after.startswith(": ")):
                return None
            return self.quoted(text[: end + 1], line.number), after[1:].strip()
        match = re.match(r"([^\s:][^:]*?)\s*:(\s|$)", text)
        if match is None or text[0] in "[{":
            return None
        key = match.group(1)
        if key[0] in _INDICATORS:
            raise self.error(line.number, f"YAML {_INDICATORS[key[0]]} ({key[0]}) are not supported")
        try:
            plain_string = _PLAIN_KEY.fullmatch(key) is not None and isinstance(_resolve_plain(key), str)
        except ValueError:  # an ambiguous word such as `yes` or `n`
            plain_string = False
        if not plain_string:
            raise self.error(line.number, f"unsupported key {key!r}: keys must be plain names (not bools, numbers, "
                                          "null or yes/no/on/off) or quoted strings")
        return key, text[match.end():].strip()

    def inline(self, text: str, number: int) -> Any:
        if text[0] == "[":
            value, end = self.flow_sequence(text, 0, number, depth=0)
            if text[end:].strip():
                raise self.error(number, f"unexpected text after a flow list: {text[end:].strip()!r}")
            return value
        if text[0] == "{":
            if text.replace(" ", "") == "{}":
                return {}
            raise self.error(number, "flow mappings ({...}) other than {} are not supported")
        if text[0] in "'\"":
            end = _quoted_end(text, 0)
            if end is None:
                raise self.error(number, "unterminated quoted string")
            if text[end + 1:].strip():
                raise self.error(number, f"unexpected text after a quoted string: {text[end + 1:].strip()!r}")
            return self.quoted(text, number)
        return self.plain(text, number)

    def plain(self, text: str, number: int, flow: bool = False) -> Any:
        if text[0] in _INDICATORS:
            raise self.error(number, f"YAML {_INDICATORS[text[0]]} ({text[0]}) are not supported")
        if text[0] == "-" and (len(text) == 1 or text[1] == " "):
            raise self.error(number, "a list item where a value was expected")
        if ": " in text or text.endswith(":"):
            raise self.error(number, f"a ':' inside a plain value is ambiguous, quote it: {text!r}")
        if flow and any(c in text for c in "[]{},"):
            raise self.error(number, f"unexpected flow characters in {text!r}")
        try:
            return _resolve_plain(text)
        except ValueError as e:
            raise self.error(number, str(e)) from None

    def quoted(self, text: str, number: int) -> str:
        body = text[1:-1]
        if text[0] == "'":
            return body.replace("''", "'")
        out, i = [], 0
        escapes = {"\\": "\\", '"': '"', "n": "\n", "t": "\t", "/": "/", "0": "\0", "r": "\r"}
        while i < len(body):
            ch = body[i]
            if ch == "\\":
                if i + 1 >= len(body) or body[i + 1] not in escapes:
                    raise self.error(number, f"unsupported escape in {text!r}")
                out.append(escapes[body[i + 1]])
                i += 2
            else:
                out.append(ch)
                i += 1
        return "".join(out)

    def flow_sequence(self, text: str, start: int, number: int, depth: int) -> tuple[list, int]:
        """Parse `[a, b, [c]]` from text[start] == '['; returns (list, index after the closing ']')."""
        if depth > MAX_DEPTH:
            raise self.error(number, f"nesting deeper than {MAX_DEPTH} levels")
        out: list = []
        i = start + 1
        expect_item = True
        while True:
            while i < len(text) and text[i] == " ":
                i += 1
            if i >= len(text):
                raise self.error(number, "unterminated flow list (flow lists must fit on one line)")
            ch = text[i]
            if ch == "]":
                return out, i + 1
            if ch == ",":
                if expect_item:
                    raise self.error(number, "empty item in a flow list")
                expect_item = True
                i += 1
                continue
            if not expect_item:
                raise self.error(number, "missing ',' between flow list items")
            if ch == "[":
                item, i = self.flow_sequence(text, i, number, depth + 1)
            elif ch == "{":
                raise self.error(number, "flow mappings inside flow lists are not supported")
            elif ch in "'\"":
                end = _quoted_end(text, i)
                if end is None:
                    raise self.error(number, "unterminated quoted string")
                item, i = self.quoted(text[i: end + 1], number), end + 1
            else:
                end = i
                while end < len(text) and text[end] not in ",]":
                    end += 1
                item = self.plain(text[i:end].strip(), number, flow=True)
                i = end
            out.append(item)
            expect_item = False


def _is_item(text: str) -> bool:
    return text == "-" or text.startswith("- ")


def _quoted_end(text: str, start: int) -> Optional[int]:
    """Index of the quote closing the quoted scalar that opens at text[start], or None."""
    quote, i = text[start], start + 1
    while i < len(text):
        if quote == "'" and text[i] == "'":
            if i + 1 < len(text) and text[i + 1] == "'":
                i += 2
                continue
            return i
        if quote == '"':
            if text[i] == "\\":
                i += 2
                continue
            if text[i] == '"':
                return i
        i += 1
    return None


def _resolve_plain(text: str) -> Any:
    """The value of a plain (unquoted) scalar; ValueError for forms whose meaning depends on the YAML version."""
    if text in ("~", "null", "Null", "NULL"):
        return None
    if text in ("true", "True", "TRUE"):
        return True
    if text in ("false", "False", "FALSE"):
        return False
    if text.lower() in _AMBIGUOUS_BOOLS:
        raise ValueError(f"{text!r} is a bool in YAML 1.1 and a string in YAML 1.2: write true/false or quote it")
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    if text.lower() in _SPECIAL_FLOATS:
        return _SPECIAL_FLOATS[text.lower()]
    if _TIMESTAMP.fullmatch(text):
        raise ValueError(f"{text!r} is a date in YAML 1.1 and a string in YAML 1.2: quote it")
    if _AMBIGUOUS_NUMBER.fullmatch(text):
        raise ValueError(f"{text!r} is read differently by YAML 1.1 and 1.2: write a plain decimal number or quote it")
    return text


def parse_yaml_subset(text: str, source: str = "<yaml>") -> Any:
    """Parse YAML text in the subset described in this module's docstring.

    Returns nested dicts (insertion-ordered), lists and scalars (str, int, float, bool, None).
    Raises YamlSubsetError naming `source` and the line for anything outside the subset.
    """
    return _Parser(text, source).document()


def read_yaml_subset(path: "str | os.PathLike[str]") -> Any:
    """Read a YAML file of the taming-config subset (a regular file of at most MAX_CONFIG_BYTES)."""
    data = read_bytes(path, "config file", MAX_CONFIG_BYTES)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise YamlSubsetError(f"{os.fspath(path)}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return parse_yaml_subset(text, os.fspath(path))
