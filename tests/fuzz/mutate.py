"""Hypothesis strategies that mutate seed inputs the way coverage fuzzers do, plus JSON-aware edits.

Byte-level operators (AFL/libFuzzer's classic set): bit flip, interesting byte / 16- / 32-bit value
(both endiannesses), truncation, deletion, random insertion, duplication of a range, a dictionary
token (JSON and protocol punctuation, lone-surrogate escapes, huge numbers, deep nesting) and the
splice of two seeds. JSON seeds additionally get structural edits: a random member replaced by an
arbitrary JSON value, removed, or given a hostile sibling — which reaches type checks that byte
flips almost never reach. Hypothesis shrinks a failing mutation chain to a small one.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st

INTERESTING_8 = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0x20, 0x0A, 0x22, 0x5C)
INTERESTING_INTS = (0, 1, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000,
                    0xFFFFFFFF)
TOKENS = (
    b"\\ud800", b"\\udfff", b"\\u0000", b"\xed\xa0\x80", b"\xff\xfe", b"\xc3", b"\x00",
    b"-1", b"1e999", b"-0", b"9" * 40, b"1.5", b"true", b"null", b"[]", b"{}", b'""', b"[[[", b"}}}",
    b"\r\n", b"\r\n\r\n", b" ", b"\t", b"%2e%2e", b"../", b"//", b":", b"=", b";", b".", b"/", b",",
    b"-----BEGIN CERTIFICATE-----\n", b"\xa1\x00", b"\xd9\xd9\xf7", b"\xc0", b"\x9f", b"\xbf", b"\xff" * 8,
)
NESTERS = (b"[", b'{"a":', b"\x81", b"\xa1\x61a")  # JSON arrays/objects, CBOR array/map


def _interesting_word() -> st.SearchStrategy[bytes]:
    return st.tuples(st.sampled_from(INTERESTING_INTS), st.sampled_from(("<H", ">H", "<I", ">I", "<Q", ">Q"))).map(
        lambda t: struct.pack(t[1], t[0] & ((1 << (struct.calcsize(t[1]) * 8)) - 1)))


@st.composite
def _mutate_once(draw: st.DrawFn, data: bytes, seeds: Sequence[bytes]) -> bytes:
    size = len(data)
    pos = draw(st.integers(0, size))
    op = draw(st.sampled_from(("flip", "byte", "word", "truncate", "delete", "insert", "dup", "token", "nest",
                               "splice")))
    if op == "flip" and size:
        i = min(pos, size - 1)
        return data[:i] + bytes([data[i] ^ (1 << draw(st.integers(0, 7)))]) + data[i + 1:]
    if op == "byte" and size:
        i = min(pos, size - 1)
        value = draw(st.sampled_from(INTERESTING_8) | st.integers(0, 255))
        return data[:i] + bytes([value]) + data[i + 1:]
    if op == "word":
        word = draw(_interesting_word())
        return data[:pos] + word + data[pos + len(word):]
    if op == "truncate":
        return data[:pos]
    if op == "delete":
        return data[:pos] + data[pos + draw(st.integers(1, 64)):]
    if op == "insert":
        return data[:pos] + draw(st.binary(min_size=1, max_size=32)) + data[pos:]
    if op == "dup" and size:
        end = draw(st.integers(pos, min(size, pos + 256)))
        return data[:end] + data[pos:end] * draw(st.integers(1, 8)) + data[end:]
    if op == "token":
        return data[:pos] + draw(st.sampled_from(TOKENS)) + data[pos:]
    if op == "nest":
        depth = draw(st.sampled_from((2, 64, 1100, 5000)))  # Python's recursion limit is 1000
        return data[:pos] + draw(st.sampled_from(NESTERS)) * depth + data[pos:]
    if op == "splice" and seeds:
        other = draw(st.sampled_from(seeds))
        return data[:pos] + other[draw(st.integers(0, len(other))):]
    return data


# ------------------------------------------------------------------------------------------ JSON structure

json_leaves = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
               | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=24)
               | st.sampled_from(("\ud800", "../../etc/passwd", "a" * 5000, "", " ", "0", "-1", "kbs:///a/b/c")))
json_values = st.recursive(json_leaves, lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(st.text(max_size=12), children, max_size=4), max_leaves=10)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            out += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            out += _paths(child, (*prefix, index))
    return out


def _replace(value: Any, path: tuple[Any, ...], new: Any, *, delete: bool = False, sibling: Any = None) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        copy = dict(value)
        if not rest and delete:
            copy.pop(head, None)
        elif not rest and sibling is not None:
            copy[sibling[0]] = sibling[1]
        else:
            copy[head] = _replace(value[head], rest, new, delete=delete, sibling=sibling)
        return copy
    copy_list = list(value)
    if not rest and delete:
        del copy_list[head]
    elif not rest and sibling is not None:
        copy_list.insert(head, sibling[1])
    else:
        copy_list[head] = _replace(value[head], rest, new, delete=delete, sibling=sibling)
    return copy_list


@st.composite
def json_mutation(draw: st.DrawFn, seed: bytes) -> bytes:
    """Edit the JSON structure of ``seed`` (falls back to the seed when it is not JSON)."""
    try:
        value = json.loads(seed)
    except ValueError:
        return seed
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(value)
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(("replace", "delete", "sibling")))
        if op == "replace" or not path:
            value = _replace(value, path, draw(json_values))
        elif op == "delete":
            value = _replace(value, path, None, delete=True)
        else:
            key = draw(st.text(max_size=8) | st.sampled_from([str(path[-1])]))
            value = _replace(value, path, None, sibling=(key, draw(json_values)))
    try:
        return json.dumps(value, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    except (ValueError, OverflowError):  # NaN/inf are allowed by json.dumps; surrogates are handled above
        return seed


@st.composite
def mutated(draw: st.DrawFn, seeds: Sequence[bytes], *, json_seeds: bool = False, max_ops: int = 4) -> bytes:
    """A seed after 1..``max_ops`` mutations (JSON-structural ones first when ``json_seeds``)."""
    data = draw(st.sampled_from(seeds))
    if json_seeds and draw(st.booleans()):
        data = draw(json_mutation(data))
    for _ in range(draw(st.integers(0 if json_seeds else 1, max_ops))):
        data = draw(_mutate_once(data, seeds))
    return data
