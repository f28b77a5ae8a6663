"""Input generators, one per target: :class:`Inputs` makes every input of a run from one seed.

Inputs are valid messages made by the encoders, then mutated: bit flips, truncation, splicing,
msgpack-aware edits (types, lengths, nesting, huge ints, bin/str swaps, ext types), zstd-aware
edits (bombs, lying frame headers, recompressed mutated records), JSON-aware edits for manifests
and commands, and plain random bytes. The ingress inputs also simulate cameras that stream.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import zstandard

from evc.errors import EvcError
from evc.fuzz.contract import DEVICES, SITE, fuzz_signing_key, pack_message
from evc.fuzz.mutate import Bombs, Mutator, get_at, json_text, replace_at, tree_paths
from evc.fuzz.seeds import (
    batch_seeds,
    chunk_request_seeds,
    chunk_seeds,
    device_command_seeds,
    gateway_command_seeds,
    manifest_seeds,
    record_seeds,
    sample_record,
)
from evc.models.manifest import Manifest
from evc.wire import (
    BatchEncoding,
    Channel,
    DeviceTopic,
    Kind,
    decode,
    encode_batch,
    encode_detections,
)


@dataclass(slots=True)
class _Device:
    """One simulated camera: its key counter, clock and moving objects."""

    seq: int = 0
    epoch: int = 1764201600
    ts_ms: int = 1764201600000
    objects: list[list[float]] = field(default_factory=list)


class Inputs:
    """Makes the inputs of every target from one seed: ``Inputs(seed).make(name)``."""

    def __init__(self, seed: int, *, bombs: Bombs | None = None) -> None:
        self.rng = random.Random(seed)
        self.np_rng = np.random.default_rng(seed)
        self.mutate = Mutator(self.rng, bombs or Bombs())
        self.seeds = {
            "record": record_seeds(), "batch": batch_seeds(),
            "chunk_request": chunk_request_seeds(), "chunk": chunk_seeds(),
            "manifest": manifest_seeds(), "gateway_command": gateway_command_seeds(),
            "device_command": device_command_seeds(),
        }
        self.device_seeds = {d: record_seeds(d) for d in DEVICES}
        self.devices = {d: _Device() for d in DEVICES}
        self._make: dict[str, Callable[[], bytes]] = {
            "record": self.record, "batch": self.batch,
            "chunk_request": lambda: self.msgpack_input("chunk_request"),
            "chunk": lambda: self.msgpack_input("chunk"), "manifest": self.manifest,
            "gateway_command": lambda: self.json_input("gateway_command"),
            "device_command": lambda: self.json_input("device_command"),
            "admit": self.admit, "cloud_ingest": self.cloud_ingest,
        }

    def make(self, target: str) -> bytes:
        """The next input for ``target``."""
        return self._make[target]()

    def _pick(self, weights: Sequence[float]) -> int:
        return self.rng.choices(range(len(weights)), weights)[0]

    def msgpack_input(self, name: str) -> bytes:
        """Random bytes, or a seed with byte-level or msgpack-aware edits."""
        seeds = self.seeds[name]
        seed = self.rng.choice(seeds)
        choice = self._pick((1, 3, 5, 0.3))
        if choice == 0:
            return self.mutate.random_bytes()
        if choice == 1:
            return self.mutate.bytes_(seed, seeds)
        if choice == 2:
            return self.mutate.msgpack_(seed)
        return self.mutate.deep_msgpack()

    def record(self, seeds: Sequence[bytes] | None = None) -> bytes:
        """A record input: :meth:`msgpack_input`, or a SAMPLE whose regions' zstd is edited."""
        seeds = seeds or self.seeds["record"]
        if self.rng.random() < 0.12:
            return self.sample_regions(self.rng.choice(seeds[7:9]))
        if self.rng.random() < 0.08:
            return self.rng.choice(seeds)  # keep some valid records in every stream
        saved, self.seeds["record"] = self.seeds["record"], list(seeds)
        try:
            return self.msgpack_input("record")
        finally:
            self.seeds["record"] = saved

    def sample_regions(self, seed: bytes) -> bytes:
        """A SAMPLE with one region's data broken, bombed or resized."""
        doc = msgpack.unpackb(seed, raw=False)
        body = doc[6]
        region = self.rng.choice(body["regions"])
        raw = zstandard.ZstdDecompressor().decompress(region[6])
        if self.rng.random() < 0.2:  # a large frame and one region that is a (small) bomb
            side = self.rng.choice((591, 592, 1024))
            body["width"] = body["height"] = side
            region[:6] = [0, 0, side, side, side, side]
            region[6] = self.mutate.bombs.small
        else:
            region[6] = self.mutate.zstd_(raw)
        return bytes(msgpack.packb(doc, use_bin_type=True))

    def batch(self) -> bytes:
        """A batch input: edits of the envelope, or records edited inside a valid batch,
        plain or recompressed (with lies and bombs)."""
        choice = self._pick((4, 2, 3, 0.5))
        if choice == 0:
            return self.msgpack_input("batch")
        records = [self.record() if self.rng.random() < 0.3 else r
                   for r in self.rng.sample(self.seeds["record"], self.rng.randint(0, 6))]
        encoding = BatchEncoding.ZSTD if self.rng.random() < 0.6 else BatchEncoding.PLAIN
        data = encode_batch(origin="gw-1", epoch=5, seq=self.rng.randint(1, 9), ts_ms=1,
                            site=SITE, records=records, encoding=encoding)
        if choice == 1 or encoding is BatchEncoding.PLAIN:
            return data
        doc = msgpack.unpackb(data, raw=False)
        inner = msgpack.packb(records, use_bin_type=True)
        if choice == 3:
            doc[6][2] = self.mutate.zstd_bomb()
        else:
            doc[6][2] = self.mutate.zstd_(self.mutate.msgpack_(inner) if records else inner)
        return bytes(msgpack.packb(doc, use_bin_type=True))

    def json_input(self, name: str) -> bytes:
        """Random bytes, byte-level edits, JSON-aware edits, or deep nesting."""
        seeds = self.seeds[name]
        seed = self.rng.choice(seeds)
        choice = self._pick((1, 2.5, 5, 1))
        if choice == 0:
            return self.mutate.random_bytes()
        if choice == 1:
            return self.mutate.bytes_(seed, seeds)
        if choice == 2:
            return self.json_edit(json.loads(seed)).encode("utf-8", "surrogatepass")
        return self.deep_json(json.loads(seed))

    def json_edit(self, doc: Any) -> str:
        """Edit 1-3 nodes of a JSON document (types, huge numbers, strings, nesting)."""
        for _ in range(self.rng.randint(1, 3)):
            path = self.rng.choice(list(tree_paths(doc)))
            old = get_at(doc, path)
            value = self.rng.choice((
                self.mutate.new_value(old),
                10**400, -(10**19), 1e308, math.inf, "\ud800", "\x00", "9" * 5000, "",
            ))
            doc = replace_at(doc, path, value)
        return json_text(doc)

    def deep_json(self, doc: Any) -> bytes:
        """A document, or one of its fields, nested thousands deep."""
        depth = self.rng.choice((100, 1000, 3000, 30_000))
        if self.rng.random() < 0.7:
            deep = "[" * depth + "]" * depth
        else:
            deep = '{"a":' * depth + "1" + "}" * depth
        if self.rng.random() < 0.3:
            return deep.encode()
        path = self.rng.choice(list(tree_paths(doc))[1:] or [()])
        text = json_text(replace_at(doc, path, "\x00DEEP\x00"))
        return text.replace('"\\u0000DEEP\\u0000"', deep).encode()

    def manifest(self) -> bytes:
        """A signed-manifest input; a fifth are edited manifests signed again, to get past the
        signature check."""
        if self.rng.random() >= 0.2:
            return self.json_input("manifest")
        doc = json.loads(self.rng.choice(self.seeds["manifest"]))
        edited = json.loads(self.json_edit(doc["manifest"]))
        try:
            manifest = Manifest.model_validate(edited)
        except ValueError:
            doc["manifest"] = edited
            return json_text(doc).encode()
        signed = fuzz_signing_key().sign(manifest)
        return json_text(signed.model_dump(mode="python")).encode("utf-8", "surrogatepass")

    # ingress

    def frame(self, device: str) -> bytes:
        """The next detections frame of a simulated camera, now and then with a key or clock
        that jumps, repeats or runs to the end of int64."""
        state, rng = self.devices[device], self.rng
        state.seq += 1
        state.ts_ms += rng.choice((40, 40, 100, 1000, 6000))
        jump = rng.random()
        if jump < 0.02:
            state.ts_ms = rng.choice((0, 2**63 - 1, 2**63 - 1 - 5000, state.ts_ms - 10**6))
        elif jump < 0.03:
            state.seq = rng.choice((1, state.seq - 2, 2**63 - 1))
        elif jump < 0.035:
            state.epoch += 1
        if not state.objects or rng.random() < 0.1:
            state.objects = [[rng.uniform(0, 600), rng.uniform(0, 440), rng.randrange(4)]
                             for _ in range(rng.randint(0, 8))]
        for obj in state.objects:
            obj[0] += rng.uniform(-30, 30)
            obj[1] += rng.uniform(-30, 30)
        boxes = [[x, y, x + 40, y + 40] for x, y, _ in state.objects]
        classes = [int(c) if rng.random() < 0.98 else rng.choice((7, 65535)) for *_, c in
                   state.objects]
        return encode_detections(
            origin=device, epoch=state.epoch, seq=max(0, state.seq), ts_ms=max(0, state.ts_ms),
            model_version="shapes@2", width=640, height=480, class_ids=classes,
            scores=[rng.random() for _ in classes], boxes=boxes,
        )

    def admit(self) -> bytes:
        """A device message for the gateway: mostly camera streams and records of every kind
        on their own topics, then mutated payloads, wrong topics and random bytes."""
        rng = self.rng
        device = rng.choice(DEVICES)
        choice = self._pick((45, 12, 13, 12, 8, 10))
        if choice == 0:
            payload = self.frame(device)
        elif choice == 1:
            payload = rng.choice(self.device_seeds[device])
        elif choice == 2:
            payload = self.record(self.device_seeds[device])
        elif choice == 3:
            payload = self.frame(device) if rng.random() < 0.5 else rng.choice(
                self.device_seeds[device])
            return pack_message(self.bad_device_topic(device), payload)
        elif choice == 4:
            return rng.randbytes(rng.randrange(300))
        else:
            payload = sample_record(
                self.np_rng, origin=device, seq=self.devices[device].seq % 10**9 + 1,
                reason=rng.choice(("near_threshold", "random")), crop=True,
            )
        return pack_message(_topic_for(device, payload), payload, degrade=rng.random() < 0.1)

    def bad_device_topic(self, device: str) -> str:
        """A topic the gateway must refuse, or one of another device (origin mismatch)."""
        other = self.rng.choice([d for d in DEVICES if d != device])
        return self.rng.choice((
            f"evc/{SITE}/dev/{other}/det", f"evc/{SITE}/dev/{other}/hb",
            f"evc/other/dev/{device}/det",
            f"evc/{SITE}/dev/{device}/model", f"evc/{SITE}/dev/{device}/batch",
            f"evc/{SITE}/dev/{device}", f"evc/{SITE}/gw/{device}/det", f"evc/{SITE}/dev/+/det",
            f"evc/{SITE}/dev/{device}/det/x", f"evc//dev/{device}/det",
            f"EVC/{SITE}/dev/{device}/det",
            f"evc/{SITE}/dev/{'x' * 65}/det", f"evc/{SITE}/dev/\u00e9/det", "", "/", "#",
            f"evc/{SITE}/dev/.{device}/det", f"evc/{SITE}/dev/{device}\x00/det",
        ))

    def cloud_ingest(self) -> bytes:
        """An uplink message for the cloud: batches on their site's topic, else on topics of
        another site, channel or shape."""
        rng = self.rng
        payload = self.batch() if rng.random() < 0.85 else rng.choice(self.seeds["batch"])
        topic = rng.choice((f"evc/{SITE}/gw/gw-1/batch",) * 8 + (
            "evc/other/gw/gw-1/batch", f"evc/{SITE}/gw/gw-1/det", f"evc/{SITE}/dev/gw-1/batch",
            f"evc/{SITE}/gw/+/batch", "evc/x/gw/gw-1", f"evc/{SITE}/gw/{'g' * 70}/batch", "",
        ))
        return pack_message(topic, payload)


_CHANNEL_OF_KIND = {
    Kind.DETECTIONS: Channel.DETECTIONS, Kind.HEARTBEAT: Channel.HEARTBEAT,
    Kind.STATE: Channel.STATE, Kind.SAMPLE: Channel.SAMPLE,
}


def _topic_for(device: str, payload: bytes) -> str:
    """The device topic whose channel matches the payload's kind (``det`` if it has none)."""
    try:
        kind = decode(payload, max_bytes=len(payload)).kind
    except EvcError:
        kind = Kind.DETECTIONS
    return str(DeviceTopic(SITE, device, _CHANNEL_OF_KIND.get(kind, Channel.DETECTIONS)))
