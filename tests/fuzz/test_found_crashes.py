"""The smallest inputs of the crashes fuzzing found; each must be refused with a reason.

See ``docs/FUZZING.md`` (Findings). They fail until the library code is fixed.
"""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest

from evc.errors import WireError
from evc.fuzz import DeviceCommandTarget, gateway_command_target
from evc.gateway.commands import parse_command
from evc.gateway.intake import admit
from evc.gateway.pipeline import Aggregate, Pipeline, validate_operators
from evc.wire import encode_detections, validate_record
from evc.wire.delivery import chunk_from, chunk_request_from

DEEP_JSON = b"[" * 100_000  # within both command size limits once cut to 60 KiB below


def test_a_deeply_nested_pipeline_command_is_refused_not_raised() -> None:
    problems = parse_command(DEEP_JSON)
    assert isinstance(problems, list)
    assert gateway_command_target(DEEP_JSON) == "not_json"


def test_a_deeply_nested_device_command_gets_a_reply(tmp_path: Path) -> None:
    reply = DeviceCommandTarget(tmp_path).commands.handle(DEEP_JSON[: 60 * 1024])
    assert reply.result == "rejected"


@pytest.mark.parametrize("decoder", [chunk_from, chunk_request_from])
def test_a_delivery_map_with_a_bin_key_is_a_schema_error(decoder: object) -> None:
    data = msgpack.packb({"v": 1, b"sha256": "0" * 64}, use_bin_type=True)
    with pytest.raises(WireError) as raised:
        decoder(data)  # type: ignore[operator]
    assert raised.value.reason == "schema"


def test_a_window_at_the_end_of_int64_closes_into_a_valid_summary() -> None:
    pipeline = Pipeline([Aggregate(validate_operators([{"type": "aggregate"}])[0])])  # type: ignore[arg-type]
    record = encode_detections(
        origin="cam-1", epoch=1, seq=1, ts_ms=2**63 - 1, model_version="m", width=640,
        height=480, class_ids=[0], scores=[0.9], boxes=[[1, 1, 5, 5]],
    )
    admit("evc/depot-1/dev/cam-1/det", record, site="depot-1", max_bytes=4096,
          pipeline=pipeline)
    for summary in pipeline.flush():
        validate_record(summary)  # the cloud's check: ts_ms must stay in 0..2**63-1

