"""``zones`` in ``tag`` mode: named zones, which detection gets which tag, the tags on the wire."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import pytest
from pydantic import ValidationError

from evc.config import GatewayConfig
from evc.gateway import admit
from evc.gateway.pipeline import Frame, Zones, ZonesConfig, build_pipeline
from evc.metrics import GatewayMetrics
from evc.wire import Channel, DeviceTopic, decode, detections_from, encode_detections

SITE = "site-1"
DET = str(DeviceTopic(SITE, "cam-1", Channel.DETECTIONS))
LEFT = [[0, 0], [200, 0], [200, 200], [0, 200]]
RIGHT = [[300, 0], [500, 0], [500, 200], [300, 200]]
# Overlaps the right half of LEFT: x 100..250.
MIDDLE = [[100, 0], [250, 0], [250, 200], [100, 200]]


def frame(centres: list[tuple[float, float]], *, origin: str = "cam-1") -> Frame:
    """A 640x480 frame of class-0 detections, each box 10x10 pixels around its centre."""
    boxes = [(x - 5, y - 5, x + 5, y + 5) for x, y in centres]
    return Frame(
        origin=origin, epoch=1, seq=1, ts_ms=0, model_version="m", width=640, height=480,
        class_ids=np.arange(len(centres), dtype=np.uint16),
        scores=np.full(len(centres), 0.9, dtype=np.float32),
        boxes=np.array(boxes, dtype=np.float32).reshape(-1, 4),
    )


def config(devices: dict[str, Any], mode: str = "tag") -> ZonesConfig:
    return ZonesConfig.model_validate({"type": "zones", "mode": mode, "devices": devices})


def tags(tagged: Frame) -> list[str | None]:
    """Per detection, the name of its zone or None."""
    assert tagged.zone_ids is not None
    return [tagged.zone_names[i - 1] if i else None for i in tagged.zone_ids.tolist()]


# -- config ------------------------------------------------------------------------------------


def test_bare_polygons_are_named_by_position_and_mix_with_named_zones() -> None:
    zones = Zones(config({"cam-1": [LEFT, {"name": "till", "polygon": RIGHT}]}))
    out = zones(frame([(100, 100), (400, 100)]))

    assert tags(out) == ["zone-0", "till"]


def test_a_bare_polygon_error_keeps_the_key_path_of_the_entry() -> None:
    with pytest.raises(ValidationError) as error:
        config({"cam-1": [LEFT, [[0, 0], [1, 1]]]})

    [problem] = error.value.errors()
    assert problem["loc"] == ("devices", "cam-1", 1)
    assert "at least 3" in problem["msg"]


def test_a_named_zone_error_names_its_field() -> None:
    with pytest.raises(ValidationError) as error:
        config({"cam-1": [{"name": "door", "polygon": [[0, 0], [1, 1]]}]})

    [problem] = error.value.errors()
    assert problem["loc"] == ("devices", "cam-1", 0, "polygon")


@pytest.mark.parametrize(
    "zone",
    [
        pytest.param({"name": "door", "polygon": LEFT, "colour": "red"}, id="unknown-key"),
        pytest.param({"polygon": LEFT}, id="no-name"),
        pytest.param({"name": "", "polygon": LEFT}, id="empty-name"),
        pytest.param({"name": "x" * 65, "polygon": LEFT}, id="name-too-long"),
        pytest.param("door", id="not-a-zone"),
    ],
)
def test_a_bad_named_zone_is_refused(zone: Any) -> None:
    with pytest.raises(ValidationError):
        config({"cam-1": [zone]})


def test_zone_names_must_be_unique_per_device_counting_default_names() -> None:
    with pytest.raises(ValidationError, match="repeat: \\['zone-1'\\]"):
        config({"cam-1": [{"name": "zone-1", "polygon": LEFT}, RIGHT]})
    # The same name on two devices is fine.
    config({"cam-1": [{"name": "door", "polygon": LEFT}], "cam-2": [{"name": "door",
                                                                     "polygon": LEFT}]})


def test_at_most_255_zones_per_device() -> None:
    config({"cam-1": [LEFT] * 255})
    with pytest.raises(ValidationError, match="more than 255 zones"):
        config({"cam-1": [LEFT] * 256})


def test_named_zones_select_in_keep_and_drop_modes_too() -> None:
    devices = {"cam-1": [{"name": "door", "polygon": LEFT}]}
    detections = frame([(100, 100), (400, 100)])

    assert Zones(config(devices, "keep"))(detections).class_ids.tolist() == [0]
    assert Zones(config(devices, "drop"))(detections).class_ids.tolist() == [1]


def test_the_gateway_config_accepts_tag_mode_with_both_zone_forms() -> None:
    pipeline = [{"type": "zones", "mode": "tag", "devices": {"cam-1": [
        LEFT, {"name": "till", "polygon": RIGHT}]}}]
    gateway = GatewayConfig(site=SITE, gateway_id="g", pipeline=pipeline)

    [zones] = gateway.pipeline
    assert isinstance(zones, ZonesConfig)
    assert ZonesConfig.model_validate(zones.model_dump()) == zones


# -- tagging -----------------------------------------------------------------------------------


def test_tag_keeps_every_detection_and_tags_those_inside_a_zone() -> None:
    zones = Zones(config({"cam-1": [{"name": "door", "polygon": LEFT},
                                    {"name": "till", "polygon": RIGHT}]}))
    detections = frame([(400, 100), (600, 400), (50, 50), (450, 150)])

    out = zones(detections)

    assert out.class_ids.tolist() == [0, 1, 2, 3]
    assert tags(out) == ["till", None, "door", "till"]
    np.testing.assert_array_equal(out.boxes, detections.boxes)


def test_where_zones_overlap_the_first_in_config_order_wins() -> None:
    first_left = Zones(config({"cam-1": [{"name": "left", "polygon": LEFT},
                                         {"name": "middle", "polygon": MIDDLE}]}))
    first_middle = Zones(config({"cam-1": [{"name": "middle", "polygon": MIDDLE},
                                           {"name": "left", "polygon": LEFT}]}))
    detections = frame([(150, 100), (50, 100), (225, 100)])  # both, left only, middle only

    assert tags(first_left(detections)) == ["left", "left", "middle"]
    assert tags(first_middle(detections)) == ["middle", "left", "middle"]


def test_a_record_names_only_the_zones_its_detections_are_in() -> None:
    zones = Zones(config({"cam-1": [LEFT, MIDDLE, RIGHT]}))
    out = zones(frame([(400, 100), (600, 400)]))

    assert out.zone_names == ("zone-2",)
    assert out.zone_ids is not None
    assert out.zone_ids.tolist() == [1, 0]


def test_a_frame_with_nothing_in_a_zone_passes_untouched_and_untagged() -> None:
    zones = Zones(config({"cam-1": [LEFT]}))
    outside = frame([(600, 400)])
    other_device = frame([(100, 100)], origin="cam-2")
    empty = frame([])

    assert zones(outside) is outside
    assert zones(other_device) is other_device
    assert zones(empty) is empty
    assert outside.zone_ids is None


def test_a_tagged_frame_encodes_its_tags_and_decodes_to_them() -> None:
    out = Zones(config({"cam-1": [{"name": "door", "polygon": LEFT}]}))(
        frame([(600, 400), (100, 100)])
    )

    decoded = detections_from(decode(out.encode()))

    assert decoded.zone_names == ("door",)
    assert decoded.zone_ids is not None
    assert decoded.zone_ids.tolist() == [0, 1]
    assert Frame.from_envelope(decode(out.encode())).zone_names == ("door",)


def test_selecting_after_tagging_keeps_tags_aligned_and_drops_them_when_none_is_left() -> None:
    out = Zones(config({"cam-1": [{"name": "door", "polygon": LEFT}]}))(
        frame([(100, 100), (600, 400), (50, 50)])
    )

    kept = out.select(np.array([False, True, True]))
    assert tags(kept) == [None, "door"]
    untagged = out.select(np.array([False, True, False]))
    assert (untagged.zone_names, untagged.zone_ids) == ((), None)
    assert len(msgpack.unpackb(untagged.encode())[6]) == 6


def test_tag_refuses_a_column_of_the_wrong_length() -> None:
    with pytest.raises(ValueError, match="2 zone ids for 1 detections"):
        frame([(1, 1)]).tag(["a"], np.array([1, 1], dtype=np.uint8))


# -- through the pipeline and the intake -------------------------------------------------------


def _payload(centres: list[tuple[float, float]]) -> bytes:
    detections = frame(centres)
    return encode_detections(
        origin="cam-1", epoch=1, seq=1, ts_ms=0, model_version="m", width=640, height=480,
        class_ids=detections.class_ids, scores=detections.scores, boxes=detections.boxes,
    )


def _tagging_pipeline(metrics: GatewayMetrics) -> Any:
    gateway = GatewayConfig(site=SITE, gateway_id="g", pipeline=[
        {"type": "zones", "mode": "tag", "devices": {"cam-1": [{"name": "door",
                                                                "polygon": LEFT}]}},
        {"type": "threshold", "default": 0.5},
    ])
    return build_pipeline(gateway.pipeline, listener=metrics.pipeline)


def _frames_counted(metrics: GatewayMetrics, outcome: str, reason: str) -> float:
    value = metrics.registry.get_sample_value(
        "evc_gateway_pipeline_frames_total",
        {"operator": "zones", "outcome": outcome, "reason": reason},
    )
    return value or 0.0


def test_the_intake_stores_a_tagged_frame_with_its_tags_and_counts_it() -> None:
    metrics = GatewayMetrics()
    pipeline = _tagging_pipeline(metrics)
    device_bytes = _payload([(100, 100), (600, 400)])

    [stored], _ = admit(DET, device_bytes, site=SITE, max_bytes=4096, pipeline=pipeline)

    assert stored.payload != device_bytes
    decoded = detections_from(decode(stored.payload))
    assert decoded.zone_names == ("door",)
    assert decoded.zone_ids is not None
    assert decoded.zone_ids.tolist() == [1, 0]
    assert _frames_counted(metrics, "changed", "tagged") == 1
    assert _frames_counted(metrics, "passed", "") == 0


def test_the_intake_forwards_an_untagged_frame_as_the_device_sent_it() -> None:
    metrics = GatewayMetrics()
    pipeline = _tagging_pipeline(metrics)
    device_bytes = _payload([(600, 400)])

    [stored], _ = admit(DET, device_bytes, site=SITE, max_bytes=4096, pipeline=pipeline)

    assert stored.payload == device_bytes
    assert _frames_counted(metrics, "passed", "") == 1
    assert _frames_counted(metrics, "changed", "tagged") == 0
