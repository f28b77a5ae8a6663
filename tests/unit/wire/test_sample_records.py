"""SAMPLE records: lossless pixels, predictions and truth survive; bad bodies are refused."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from evc.errors import SchemaError
from evc.wire import Kind, Region, Sample, crops, encode_sample, sample_from, validate_record
from evc.wire.codec import encode

HEADER = {"origin": "cam-1", "epoch": 7, "seq": 3, "ts_ms": 1_000}


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(60, 80, 3), dtype=np.uint8)


def _sample(image: np.ndarray, regions: tuple[Region, ...], **extra: object) -> Sample:
    fields: dict[str, object] = {
        "model_version": "shapes:1", "reason": "near_threshold", "width": 80, "height": 60,
        "regions": regions, "class_ids": np.array([2, 0], np.uint16),
        "scores": np.array([0.31, 0.5], np.float32),
        "boxes": np.array([[10, 10, 30, 20], [40, 5, 60, 50]], np.float32),
        **extra,
    }
    return Sample(**fields)  # type: ignore[arg-type]


def test_a_whole_frame_sample_round_trips_exactly() -> None:
    image = _image()
    truth = {"truth_class_ids": np.array([2], np.uint16),
             "truth_boxes": np.array([[10.5, 10, 30, 20]], np.float32)}
    sample = _sample(image, (Region((0, 0, 80, 60), image),), meta={"scene_seed": 4}, **truth)

    back = sample_from(validate_record(encode_sample(**HEADER, sample=sample)))

    assert back.whole_frame
    assert np.array_equal(back.frame(), image)  # lossless: the labeller sees the model's pixels
    assert back.class_ids.tolist() == [2, 0]
    assert back.scores.tolist() == pytest.approx([0.31, 0.5], abs=1 / 255)
    assert back.truth_boxes is not None
    assert back.truth_boxes.tolist() == [[10.5, 10, 30, 20]]
    assert dict(back.meta) == {"scene_seed": 4}
    assert (back.model_version, back.reason) == ("shapes:1", "near_threshold")


def test_crops_carry_only_the_pixels_around_the_boxes() -> None:
    image = _image(1)
    regions = crops(image, [[10, 10, 30, 20]], margin=2)

    back = sample_from(validate_record(encode_sample(**HEADER, sample=_sample(image, regions))))

    assert not back.whole_frame
    assert back.regions[0].box == (8, 8, 32, 22)
    assert np.array_equal(back.regions[0].image, image[8:22, 8:32])
    assert back.frame()[0, 0].tolist() == [0, 0, 0]  # outside every crop stays black


def _body(sample_bytes: bytes) -> dict[str, object]:
    body = msgpack.unpackb(sample_bytes, raw=False)[6]
    assert isinstance(body, dict)
    return body


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: b.pop("reason"), "sample body"),
        (lambda b: b.update(extra=1), "sample body"),
        (lambda b: b["regions"][0].__setitem__(2, 500), "outside its frame"),
        (lambda b: b["regions"][0].__setitem__(6, b"not zstd"), "decompress"),
        (lambda b: b["det"].__setitem__(1, b"\x01"), "disagree"),
        (lambda b: b.update(meta={"k": [1]}), "scalars"),
        (lambda b: b.update(truth=[b"\x01\x00", b"\x00" * 8]), "truth"),
    ],
)
def test_malformed_sample_bodies_are_refused(change: object, message: str) -> None:
    image = _image()
    good = encode_sample(**HEADER, sample=_sample(image, (Region((0, 0, 80, 60), image),)))
    body = _body(good)
    change(body)  # type: ignore[operator]

    with pytest.raises(SchemaError, match=message):
        sample_from(validate_record(encode(Kind.SAMPLE, **HEADER, body=body)))
