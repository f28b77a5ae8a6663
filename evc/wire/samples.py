"""SAMPLE records: a hard example a device uploads for the learning loop.

A sample carries what the device saw (the whole frame, or only crops of it where privacy asks
for that), what its model predicted, that model's version and why it was sampled. Images travel
as raw RGB bytes compressed with zstd: lossless, so a labeller and a trainer see exactly the
pixels the model saw, and no image codec is needed on the device.

A synthetic scene knows its ground truth; a device running one may attach it as ``truth`` so
that the demo's labeller can use it. Real cameras leave it out, and their samples are labelled
by people (export to COCO or YOLO and label in your own tool).

Body (a msgpack map, ``docs/PROTOCOL.md``)::

    {"model": str, "reason": str, "width": int, "height": int,
     "regions": [[x1, y1, x2, y2, rows, cols, zstd(rgb8 bytes)], ...],
     "det": [class_ids, scores, boxes],          # the detection columns of DETECTIONS
     "truth": [class_ids, boxes] | absent,       # uint16 classes, float32 pixel boxes
     "meta": {str: scalar}}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import zstandard

from evc.errors import SchemaError
from evc.wire.codec import (
    MAX_DETECTIONS_PER_FRAME,
    Envelope,
    Kind,
    _object_arrays,
    _object_columns,
    encode,
    register_body_check,
)

Scalar = int | float | str | bool | None
_MAX_REGIONS = 64
_MAX_SIDE = 8192  # pixels of a frame's width or height
_MAX_PIXELS = 4096 * 4096  # of all regions together: ~50 MB unpacked, whatever the count
_ZSTD_LEVEL = 3


@dataclass(frozen=True, slots=True)
class Region:
    """Pixels of one rectangle of the frame: ``image`` is ``(rows, cols, 3)`` uint8 RGB taken
    from ``box = (x1, y1, x2, y2)`` (integer pixels, ``x2``/``y2`` exclusive)."""

    box: tuple[int, int, int, int]
    image: npt.NDArray[np.uint8]


@dataclass(frozen=True, slots=True)
class Sample:
    """One hard example as the cloud sees it."""

    model_version: str
    reason: str
    width: int
    height: int
    regions: tuple[Region, ...]
    class_ids: npt.NDArray[np.uint16]
    scores: npt.NDArray[np.float32]
    boxes: npt.NDArray[np.float32]
    truth_class_ids: npt.NDArray[np.uint16] | None = None
    truth_boxes: npt.NDArray[np.float32] | None = None
    meta: Mapping[str, Scalar] = field(default_factory=dict)

    @property
    def whole_frame(self) -> bool:
        """True when the sample carries the whole frame as its one region."""
        return len(self.regions) == 1 and self.regions[0].box == (0, 0, self.width, self.height)

    def frame(self) -> npt.NDArray[np.uint8]:
        """The frame with every region pasted in place and the rest black."""
        canvas = np.zeros((self.height, self.width, 3), dtype=np.uint8)
        for region in self.regions:
            x1, y1, x2, y2 = region.box
            canvas[y1:y2, x1:x2] = region.image
        return canvas


def whole_frame(image: npt.NDArray[np.uint8]) -> tuple[Region, ...]:
    """The regions of a sample that carries the whole ``image``."""
    rows, cols = image.shape[:2]
    return (Region((0, 0, int(cols), int(rows)), image),)


def crops(
    image: npt.NDArray[np.uint8], boxes: npt.ArrayLike, *, margin: int = 4
) -> tuple[Region, ...]:
    """The regions of a sample that carries only the pixels around ``boxes`` (``margin`` pixels
    around each, clipped to the frame): for sites where whole frames may not leave the camera."""
    rows, cols = image.shape[:2]
    regions = []
    for x1, y1, x2, y2 in np.asarray(boxes, dtype=np.float32).reshape(-1, 4)[:_MAX_REGIONS]:
        left, top = max(0, int(x1) - margin), max(0, int(y1) - margin)
        right, bottom = min(cols, int(np.ceil(x2)) + margin), min(rows, int(np.ceil(y2)) + margin)
        if right > left and bottom > top:
            regions.append(Region((left, top, right, bottom), image[top:bottom, left:right]))
    return tuple(regions)


def encode_sample(*, origin: str, epoch: int, seq: int, ts_ms: int, sample: Sample) -> bytes:
    """Encode one sample (its regions compressed with zstd)."""
    if len(sample.regions) > _MAX_REGIONS:
        raise SchemaError(f"a sample carries at most {_MAX_REGIONS} regions")
    compressor = zstandard.ZstdCompressor(level=_ZSTD_LEVEL)
    regions = []
    for region in sample.regions:
        image = np.ascontiguousarray(region.image, dtype=np.uint8)
        if image.ndim != 3 or image.shape[2] != 3:
            raise SchemaError("a region's image must be (rows, cols, 3) uint8 RGB")
        rows, cols = image.shape[:2]
        regions.append([*region.box, rows, cols, compressor.compress(image.tobytes())])
    body: dict[str, Any] = {
        "model": sample.model_version, "reason": sample.reason,
        "width": sample.width, "height": sample.height, "regions": regions,
        "det": _object_columns(
            sample.width, sample.height, sample.class_ids, sample.scores, sample.boxes
        ),
        "meta": dict(sample.meta),
    }
    if sample.truth_class_ids is not None and sample.truth_boxes is not None:
        classes = np.asarray(sample.truth_class_ids, dtype="<u2")
        boxes = np.asarray(sample.truth_boxes, dtype="<f4").reshape(-1, 4)
        if len(classes) != len(boxes):
            raise SchemaError("truth classes and boxes must have the same length")
        body["truth"] = [classes.tobytes(), boxes.tobytes()]
    return encode(Kind.SAMPLE, origin=origin, epoch=epoch, seq=seq, ts_ms=ts_ms, body=body)


def sample_from(envelope: Envelope) -> Sample:
    """Validate and unpack the body of a SAMPLE envelope (images decompressed).

    Raises:
        SchemaError: the body is not a well-formed sample.
    """
    body = _checked_body(envelope)
    width, height = body["width"], body["height"]
    classes, scores, boxes = _object_arrays(width, height, *body["det"])
    truth_classes = truth_boxes = None
    if "truth" in body:
        raw_classes, raw_boxes = body["truth"]
        truth_classes = np.frombuffer(raw_classes, dtype="<u2").astype(np.uint16)
        truth_boxes = np.frombuffer(raw_boxes, dtype="<f4").reshape(-1, 4).astype(np.float32)
    return Sample(
        model_version=body["model"], reason=body["reason"], width=width, height=height,
        regions=tuple(_region(entry) for entry in body["regions"]),
        class_ids=classes, scores=scores, boxes=boxes,
        truth_class_ids=truth_classes, truth_boxes=truth_boxes, meta=body["meta"],
    )


def _region(entry: list[Any]) -> Region:
    x1, y1, x2, y2, rows, cols, data = entry
    expected = rows * cols * 3
    try:
        raw = zstandard.ZstdDecompressor().decompress(data, max_output_size=expected)
    except zstandard.ZstdError as exc:
        raise SchemaError(f"a sample region does not decompress: {exc}") from exc
    if len(raw) != expected:
        raise SchemaError("a sample region's pixels do not match its size")
    image = np.frombuffer(raw, dtype=np.uint8).reshape(rows, cols, 3)
    return Region((x1, y1, x2, y2), image)


def _checked_body(envelope: Envelope) -> dict[str, Any]:
    """The sample body after every type and size check (images not decompressed)."""
    if envelope.kind is not Kind.SAMPLE:
        raise SchemaError(f"expected a sample message, got {envelope.kind.name}")
    body = envelope.body
    keys = {"model", "reason", "width", "height", "regions", "det", "meta"}
    if not isinstance(body, dict) or not keys <= body.keys() or body.keys() - keys - {"truth"}:
        raise SchemaError(f"sample body must be a map of {sorted(keys)} (and optional truth)")
    width, height = body["width"], body["height"]
    if type(width) is not int or type(height) is not int or not (
        0 < width <= _MAX_SIDE and 0 < height <= _MAX_SIDE
    ):
        raise SchemaError(f"sample width and height must be integers in 1..{_MAX_SIDE}")
    if not isinstance(body["model"], str) or not isinstance(body["reason"], str):
        raise SchemaError("sample model and reason must be strings")
    if not isinstance(body["meta"], dict) or not all(
        isinstance(k, str) and (v is None or isinstance(v, int | float | str | bool))
        for k, v in body["meta"].items()
    ):
        raise SchemaError("sample meta must map strings to scalars")
    _check_regions(body["regions"], width, height)
    _check_det(body["det"])
    if "truth" in body:
        _check_truth(body["truth"])
    return body


def _check_regions(regions: Any, width: int, height: int) -> None:
    if not isinstance(regions, list) or len(regions) > _MAX_REGIONS:
        raise SchemaError(f"sample regions must be a list of at most {_MAX_REGIONS}")
    pixels = 0
    for entry in regions:
        if not isinstance(entry, list) or len(entry) != 7:
            raise SchemaError("a sample region must be [x1, y1, x2, y2, rows, cols, data]")
        *numbers, data = entry
        if not all(type(n) is int for n in numbers) or type(data) is not bytes:
            raise SchemaError("a sample region's box and size must be integers, its data bin")
        x1, y1, x2, y2, rows, cols = numbers
        if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
            raise SchemaError("a sample region lies outside its frame")
        if (rows, cols) != (y2 - y1, x2 - x1):
            raise SchemaError("a sample region's size does not match its box")
        pixels += rows * cols
        if pixels > _MAX_PIXELS:  # checked before anything is decompressed
            raise SchemaError(f"sample regions hold more than {_MAX_PIXELS} pixels")


def _check_det(det: Any) -> None:
    if not isinstance(det, list) or len(det) != 3 or not all(type(c) is bytes for c in det):
        raise SchemaError("sample det must be [class_ids, scores, boxes] bin columns")
    classes, scores, boxes = det
    count = len(scores)
    if count > MAX_DETECTIONS_PER_FRAME:
        raise SchemaError(f"{count} detections exceed the limit of {MAX_DETECTIONS_PER_FRAME}")
    if len(classes) not in (count, 2 * count) or len(boxes) != 8 * count:
        raise SchemaError("sample class ids, scores and boxes disagree on their length")


def _check_truth(truth: Any) -> None:
    if not isinstance(truth, list) or len(truth) != 2 or not all(type(c) is bytes for c in truth):
        raise SchemaError("sample truth must be [class_ids, boxes] bin columns")
    classes, boxes = truth
    if len(classes) % 2 or len(boxes) != 16 * (len(classes) // 2):
        raise SchemaError("sample truth classes and boxes disagree on their length")


register_body_check(Kind.SAMPLE, _checked_body)
