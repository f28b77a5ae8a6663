"""Mutators: byte-level, msgpack-aware, zstd-aware and JSON-tree edits of seed inputs."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import zstandard

_HUGE_INTS = (2**64 - 1, 2**63, 2**63 - 1, -(2**63), -1, 0, 1, 255, 256, 65535, 65536, 4096,
              4097, 2**32 - 1, 2**32)
_INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0x90, 0x9F, 0xC0, 0xC1, 0xC4, 0xC5, 0xC6, 0xCC,
                      0xCF, 0xD3, 0xD4, 0xD9, 0xDB, 0xDD, 0xDF, 0xE0, 0xFF)


def _zstd(data: bytes, *, size: bool = True) -> bytes:
    return zstandard.ZstdCompressor(level=1, write_content_size=size).compress(data)


@dataclass(frozen=True, slots=True)
class Bombs:
    """zstd frames that inflate far beyond their size, made once per run."""

    declared: bytes = field(default_factory=lambda: _zstd(bytes(64 << 20)))
    undeclared: bytes = field(default_factory=lambda: _zstd(bytes(8 << 20), size=False))
    small: bytes = field(default_factory=lambda: _zstd(bytes(1 << 20), size=False))


class Mutator:
    """Makes fuzz inputs from seeds with a seeded :class:`random.Random`."""

    def __init__(self, rng: random.Random, bombs: Bombs) -> None:
        self.rng = rng
        self.bombs = bombs

    # byte level

    def random_bytes(self) -> bytes:
        """Plain random bytes, mostly short."""
        size = self.rng.choice((0, 1, 2, 7, 16, 64, 256, 1024, self.rng.randrange(4096)))
        return self.rng.randbytes(size)

    def bytes_(self, data: bytes, others: Sequence[bytes] = ()) -> bytes:
        """1-4 byte-level edits: flips, interesting bytes, inserts, deletes, truncation,
        duplication, splicing with another seed."""
        out = bytearray(data)
        for _ in range(self.rng.randint(1, 4)):
            self._byte_edit(out, others)
        return bytes(out)

    def _byte_edit(self, out: bytearray, others: Sequence[bytes]) -> None:
        rng, at = self.rng, self.rng.randrange(len(out) + 1)
        op = rng.randrange(8)
        if op == 0 and out:
            out[at % len(out)] ^= 1 << rng.randrange(8)
        elif op == 1 and out:
            out[at % len(out)] = rng.choice(_INTERESTING_BYTES)
        elif op == 2:
            out[at:at] = rng.randbytes(rng.randint(1, 8))
        elif op == 3:
            del out[at : at + rng.randint(1, 16)]
        elif op == 4:
            del out[at:]  # truncation
        elif op == 5:
            out[at:at] = out[at : at + rng.randint(1, 64)]
        elif op == 6 and others:
            other = rng.choice(others)
            cut = rng.randrange(len(other) + 1)
            out[at:] = other[cut:]  # splice
        else:
            out.extend(rng.randbytes(rng.randint(1, 4)))  # trailing bytes

    # msgpack level

    def msgpack_(self, data: bytes) -> bytes:
        """Unpack, edit 1-3 nodes of the document tree, pack again (sometimes with str and bin
        packed alike, or a container header that lies about its length)."""
        rng = self.rng
        doc: Any = msgpack.unpackb(data, raw=False, strict_map_key=False)
        for _ in range(rng.randint(1, 3)):
            doc = self._edit_tree(doc)
        try:
            out: bytes = msgpack.packb(doc, use_bin_type=rng.random() < 0.9)
        except (ValueError, OverflowError, TypeError):  # deeper than msgpack packs, ints > u64
            return self.deep_msgpack()
        return self._lying_header(out) if rng.random() < 0.1 else out

    def _edit_tree(self, doc: Any) -> Any:
        paths = list(tree_paths(doc))
        path = self.rng.choice(paths)
        return replace_at(doc, path, self.new_value(get_at(doc, path)))

    def new_value(self, old: Any) -> Any:  # noqa: PLR0911 -- one return per kind of edit
        """A value to put where ``old`` was: another type, size, nesting or boundary value."""
        rng = self.rng
        op = rng.randrange(10)
        if op == 0:
            return rng.choice(_HUGE_INTS)
        if op == 1:
            return self._scalar()
        if op == 2 and isinstance(old, bytes):
            return old.decode("latin-1")  # bin -> str
        if op == 2 and isinstance(old, str):
            return old.encode("utf-8", "surrogatepass")  # str -> bin
        if op == 3 and isinstance(old, bytes | str):
            return _resize(rng, old)
        if op == 4 and isinstance(old, list):
            return _resize(rng, old)
        if op == 5 and isinstance(old, dict):
            return self._edit_map(old)
        if op == 6:
            return self._nest(old, rng.choice((1, 2, 16, 200)))
        if op == 7:
            if rng.random() < 0.5:
                return msgpack.Timestamp(rng.randint(-(2**33), 2**34 - 1), rng.randrange(10**9))
            return msgpack.ExtType(rng.choice((0, 5, 127)), rng.randbytes(rng.choice((3, 4, 12))))
        if op == 8 and isinstance(old, int) and not isinstance(old, bool):
            return old + rng.choice((-1, 1, 2**32, -(2**32)))
        return rng.choice(([], {}, [old, old], {"k": old}, True, None, 0.5, math.nan, -0.0))

    def _scalar(self) -> Any:
        rng = self.rng
        return rng.choice((None, True, False, 0, -1, 1.5, math.inf, math.nan, "", "x" * 65,
                           "é\u2028", b"", rng.randbytes(rng.randint(1, 40)),
                           rng.randint(-(2**63), 2**64 - 1)))

    def _edit_map(self, old: dict[Any, Any]) -> dict[Any, Any]:
        rng = self.rng
        new = dict(old)
        op = rng.randrange(4)
        if op == 0 and new:
            del new[rng.choice(list(new))]
        elif op == 1:
            new[rng.choice(("extra", "truth", "v", "error", "", 1, b"bin"))] = self._scalar()
        elif op == 2 and new:
            key = rng.choice(list(new))
            new[key.encode("utf-8", "surrogatepass") if isinstance(key, str) else 7] = new.pop(key)
        else:
            new = {**new, **{f"k{i}": i for i in range(rng.choice((1, 40)))}}
        return new

    def _nest(self, value: Any, depth: int) -> Any:
        for _ in range(depth):
            value = [value] if self.rng.random() < 0.7 else {"n": value}
        return value

    def deep_msgpack(self) -> bytes:
        """A document nested far past any sane depth, made by hand (msgpack will not pack it)."""
        depth = self.rng.choice((100, 600, 1100, 5000, 100_000))
        head = self.rng.choice((b"\x91", b"\x81\xa1k", b"\x97\x01\x01\xa1a\x01\x01\x01\x91"))
        if self.rng.random() < 0.1:  # a timestamp ext of a length no timestamp has
            return head + b"\xc7\x05\xff" + self.rng.randbytes(5)
        return head + b"\x91" * depth + b"\xc0"

    def _lying_header(self, data: bytes) -> bytes:
        """Replace one fixarray/fixmap/fixstr header by a 32-bit one that claims 2**32-1."""
        spots = [i for i, b in enumerate(data) if 0x80 <= b <= 0xBF]
        if not spots:
            return data
        at = self.rng.choice(spots)
        kind = data[at] & 0xF0
        header = {0x80: b"\xdf", 0x90: b"\xdd"}.get(kind, b"\xdb") + b"\xff\xff\xff\xff"
        return data[:at] + header + data[at + 1 :]

    # zstd level

    def zstd_bomb(self) -> bytes:
        """A zstd frame that inflates a thousandfold or more, with or without its size."""
        bombs = self.bombs
        return self.rng.choice((bombs.declared, bombs.undeclared, bombs.small))

    def zstd_(self, raw: bytes) -> bytes:  # noqa: PLR0911 -- one return per kind of edit
        """A zstd frame of ``raw`` that lies or breaks: wrong declared size, truncated, two
        frames, a skippable frame, a bomb, or ``raw`` edited then compressed properly."""
        rng = self.rng
        frame = _zstd(raw, size=rng.random() < 0.5)
        op = rng.randrange(7)
        if op == 0:
            return _zstd(raw + rng.randbytes(rng.randint(1, 100)))
        if op == 1:
            return frame[: rng.randrange(len(frame))]
        if op == 2:
            return frame + frame
        if op == 3:
            return b"\x50\x2a\x4d\x18" + (4).to_bytes(4, "little") + b"skip" + frame
        if op == 4:
            return self.zstd_bomb()
        if op == 5:
            return _zstd(raw[: rng.randrange(len(raw) + 1)])
        return self.bytes_(frame)


def tree_paths(doc: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The path (keys and indices) of every node of a document tree, the root first."""
    yield prefix
    if isinstance(doc, list):
        for i, item in enumerate(doc):
            yield from tree_paths(item, (*prefix, i))
    elif isinstance(doc, dict):
        for key, item in doc.items():
            yield from tree_paths(item, (*prefix, key))


def get_at(doc: Any, path: tuple[Any, ...]) -> Any:
    """The node of ``doc`` at ``path``."""
    for part in path:
        doc = doc[part]
    return doc


def replace_at(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    """``doc`` with the node at ``path`` replaced by ``value`` (in place, unless the root)."""
    if not path:
        return value
    parent = get_at(doc, path[:-1])
    parent[path[-1]] = value
    return doc


def _resize(rng: random.Random, old: Any) -> Any:
    size = len(old)
    new = rng.choice((0, max(0, size - 1), size + 1, size * 2 + 1, rng.randrange(size + 9)))
    if new <= size:
        return old[:new]
    empty: Any = b"\x01" if isinstance(old, bytes) else "a" if isinstance(old, str) else [0]
    filler = old[:1] or empty
    return old + filler * (new - size)


def json_text(doc: Any) -> str:
    """``doc`` as JSON whatever it holds: bytes as latin-1 text, other strangers by repr."""
    def default(value: Any) -> Any:
        return value.decode("latin-1") if isinstance(value, bytes) else repr(value)

    return json.dumps(doc, default=default, skipkeys=True)
