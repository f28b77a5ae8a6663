"""Fuzzing in CI: a short seeded run of every target, and structure-aware property tests.

A crash is any exception but an EvcError whose reason the target documents
(``evc.fuzz.KNOWN_REASONS``); ``docs/FUZZING.md`` has the long run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evc import fuzz
from evc.fuzz import KNOWN_REASONS, TARGETS, check, pack_message
from evc.wire import BatchEncoding, encode_batch

CI_INPUTS = 20_000
SEED = 20240601


@pytest.fixture(scope="module")
def report() -> fuzz.Report:
    return fuzz.run(inputs=CI_INPUTS, seed=SEED)


def test_the_short_run_has_no_crash(report: fuzz.Report) -> None:
    assert report.crash_count == 0, report.summary()


def test_every_input_is_accepted_or_rejected_with_a_known_reason(report: fuzz.Report) -> None:
    assert report.inputs == CI_INPUTS
    assert sum(s.inputs for s in report.targets.values()) == CI_INPUTS
    for name, stats in report.targets.items():
        assert stats.inputs >= CI_INPUTS // len(TARGETS)
        assert stats.accepted + sum(stats.rejected.values()) + stats.crashes == stats.inputs
        assert set(stats.rejected) <= KNOWN_REASONS[name]
        # Both sides of every decoder are exercised: some valid inputs and some rejections.
        assert stats.accepted > 0, name
        assert sum(stats.rejected.values()) > 0, name


def test_the_run_is_deterministic() -> None:
    first = fuzz.run(inputs=900, seed=3).to_json()
    again = fuzz.run(inputs=900, seed=3).to_json()
    for report in (first, again):
        report.pop("seconds")
        for stats in report["targets"].values():
            stats.pop("seconds")
            stats.pop("slowest_ms")
    assert first == again


# -- structure-aware properties ------------------------------------------------------------------

SCALAR = (
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats() | st.text(max_size=12) | st.binary(max_size=24)
)
VALUE = st.recursive(
    SCALAR,
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.text(max_size=6) | st.binary(max_size=3), inner, max_size=5),
    max_leaves=20,
)
JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=5),
    max_leaves=20,
)
SEEDS = {
    "record": fuzz.record_seeds(), "batch": fuzz.batch_seeds(),
    "chunk_request": fuzz.chunk_request_seeds(), "chunk": fuzz.chunk_seeds(),
    "manifest": fuzz.manifest_seeds(), "gateway_command": fuzz.gateway_command_seeds(),
    "device_command": fuzz.device_command_seeds(),
}
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def live() -> Iterator[dict[str, fuzz.Target]]:
    with fuzz.fuzz_targets() as targets:
        yield targets


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    return list(fuzz.tree_paths(doc, prefix))


def _replaced(doc: Any, index: int, value: Any) -> Any:
    paths = _paths(doc)
    return fuzz.replace_at(doc, paths[index % len(paths)], value)


def _outcome(live: dict[str, fuzz.Target], name: str, data: bytes) -> None:
    """Run one input; a crash fails the test with its exception."""
    reason = check(live[name], name, data)
    assert reason is None or reason in KNOWN_REASONS[name]


@FAST
@given(
    st.sampled_from(["record", "batch", "chunk_request", "chunk"]),
    st.integers(0, 10_000), st.integers(0, 1000), VALUE,
)
def test_any_node_of_a_valid_message_replaced_by_any_value_is_no_crash(
    live: dict[str, fuzz.Target], name: str, pick: int, where: int, value: Any
) -> None:
    seeds = SEEDS[name]
    doc = msgpack.unpackb(seeds[pick % len(seeds)], raw=False, strict_map_key=False)
    data = msgpack.packb(_replaced(doc, where, value), use_bin_type=True)
    _outcome(live, name, data)


@FAST
@given(st.integers(0, 10), st.integers(0, 1000), JSON_VALUE,
       st.sampled_from(["manifest", "gateway_command", "device_command"]))
def test_any_field_of_a_valid_json_message_replaced_is_no_crash(
    live: dict[str, fuzz.Target], pick: int, where: int, value: Any, name: str
) -> None:
    seeds = SEEDS[name]
    doc = json.loads(seeds[pick % len(seeds)])
    _outcome(live, name, json.dumps(_replaced(doc, where, value)).encode())


@FAST
@given(st.sampled_from(sorted(SEEDS)), st.binary(max_size=600))
def test_arbitrary_bytes_are_no_crash(
    live: dict[str, fuzz.Target], name: str, data: bytes
) -> None:
    _outcome(live, name, data)


DEVICE = st.sampled_from(["cam-1", "cam-2", "cam 1", "", "+", "x" * 65])
CHANNEL = st.sampled_from(["det", "hb", "state", "sample", "model", "cmd", "batch", "x"])
SITE = st.sampled_from([fuzz.SITE, "other", ""])


@FAST
@given(SITE, DEVICE, CHANNEL, st.integers(0, 100), VALUE | st.just(None), st.booleans())
def test_admit_takes_any_topic_and_record_without_crash(
    live: dict[str, fuzz.Target], site: str, device: str, channel: str, pick: int, body: Any,
    degrade: bool,
) -> None:
    seeds = fuzz.record_seeds("cam-1")
    payload = seeds[pick % len(seeds)]
    if body is not None:
        doc = msgpack.unpackb(payload, raw=False, strict_map_key=False)
        doc[6] = body
        payload = msgpack.packb(doc, use_bin_type=True)
    topic = f"evc/{site}/dev/{device}/{channel}"
    _outcome(live, "admit", pack_message(topic, payload, degrade=degrade))


@FAST
@given(SITE, st.sampled_from(["batch", "det", "state"]), st.lists(st.integers(0, 100),
       max_size=6), st.booleans(), st.lists(VALUE, max_size=3))
def test_cloud_ingest_takes_any_batch_without_crash(
    live: dict[str, fuzz.Target], site: str, channel: str, picks: list[int], zstd: bool,
    junk: list[Any],
) -> None:
    seeds = fuzz.record_seeds()
    records = [seeds[p % len(seeds)] for p in picks]
    records += [msgpack.packb([1, 1, "cam-1", 0, 0, 0, j], use_bin_type=True) for j in junk]
    payload = encode_batch(
        origin="gw-1", epoch=1, seq=1, ts_ms=1, site=fuzz.SITE, records=records,
        encoding=BatchEncoding.ZSTD if zstd else BatchEncoding.PLAIN,
    )
    _outcome(live, "cloud_ingest", pack_message(f"evc/{site}/gw/gw-1/{channel}", payload))
