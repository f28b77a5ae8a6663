"""COCO and YOLO export: hand-worked numbers, and files that read back."""

from __future__ import annotations

import argparse
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml

from evc.cli.dataset import add_commands
from evc.cloud.dataset import Dataset, DatasetError, Item, ItemId, Labels
from evc.cloud.export import encode_png, export, export_coco, export_yolo
from evc.cloud.store import IncomingRecord, SqliteRecordStore
from evc.wire import Kind, Sample, encode_sample, whole_frame

NAMES = ("circle", "square", "triangle")


def read_png(data: bytes) -> np.ndarray:
    """A decoder for what the exporter writes (8-bit RGB, filter 0), checking every CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body)
        chunks[kind] = chunks.get(kind, b"") + body
        pos += 12 + length
    cols, rows, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    assert (depth, colour, interlace) == (8, 2, 0)
    assert b"IEND" in chunks
    raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(rows, 1 + cols * 3)
    assert (raw[:, 0] == 0).all()
    return raw[:, 1:].reshape(rows, cols, 3)


def item(seq: int, labels: Labels | None, *, rows: int = 80, cols: int = 100) -> Item:
    pixels = np.random.default_rng(seq).integers(0, 256, (rows, cols, 3), dtype=np.uint8)
    sample = Sample(
        model_version="shapes-1", reason="few", width=cols, height=rows,
        regions=whole_frame(pixels), class_ids=np.zeros(0, np.uint16),
        scores=np.zeros(0, np.float32), boxes=np.zeros((0, 4), np.float32),
    )
    return Item(ItemId("s1", "cam-1", 7, seq), 1000 + seq, sample, labels)


def labels(classes: list[int], boxes: list[list[float]]) -> Labels:
    return Labels(np.array(classes), np.array(boxes, np.float32), "synthetic-truth")


# One 100x80 image with a circle at (10, 20)-(30, 60) and a triangle at (50, 0)-(100, 40);
# one with no objects; one unlabelled.
DATASET = Dataset(items=[
    item(1, labels([0, 2], [[10, 20, 30, 60], [50, 0, 100, 40]])),
    item(2, labels([], [])),
    item(3, None),
])


def test_png_round_trips_exactly() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    assert np.array_equal(read_png(encode_png(pixels)), pixels)


def test_png_refuses_what_is_not_rgb8() -> None:
    with pytest.raises(DatasetError):
        encode_png(np.zeros((4, 4), np.uint8))
    with pytest.raises(DatasetError):
        encode_png(np.zeros((4, 4, 3), np.float32))


def test_coco_hand_worked(tmp_path: Path) -> None:
    result = export_coco(DATASET, tmp_path, class_names=NAMES)
    assert (result.images, result.annotations, result.skipped_unlabelled) == (2, 2, 1)
    doc = json.loads((tmp_path / "annotations.json").read_text())
    assert doc["categories"] == [
        {"id": 1, "name": "circle"}, {"id": 2, "name": "square"}, {"id": 3, "name": "triangle"}
    ]
    sizes = [(i["id"], i["width"], i["height"]) for i in doc["images"]]
    assert sizes == [(1, 100, 80), (2, 100, 80)]
    first, second = doc["annotations"]
    assert (first["image_id"], first["category_id"], first["bbox"], first["area"]) == (
        1, 1, [10, 20, 20, 40], 800
    )
    assert (second["category_id"], second["bbox"], second["area"]) == (3, [50, 0, 50, 40], 2000)
    assert doc["images"][0]["evc_labels"] == "synthetic-truth"
    for entry, source in zip(doc["images"], DATASET.items, strict=False):
        assert np.array_equal(read_png((tmp_path / entry["file_name"]).read_bytes()), source.image)


def test_yolo_hand_worked(tmp_path: Path) -> None:
    result = export_yolo(DATASET, tmp_path, class_names=NAMES)
    assert (result.images, result.annotations, result.skipped_unlabelled) == (2, 2, 1)
    slug = DATASET.items[0].id.slug
    lines = (tmp_path / "labels" / f"{slug}.txt").read_text().splitlines()
    # circle: centre (20, 40) of 100x80 -> 0.2 0.5, size 20x40 -> 0.2 0.5
    # triangle: centre (75, 20) -> 0.75 0.25, size 50x40 -> 0.5 0.5
    assert [[float(v) for v in line.split()] for line in lines] == [
        [0, 0.2, 0.5, 0.2, 0.5], [2, 0.75, 0.25, 0.5, 0.5]
    ]
    assert (tmp_path / "labels" / f"{DATASET.items[1].id.slug}.txt").read_text() == ""
    assert not (tmp_path / "labels" / f"{DATASET.items[2].id.slug}.txt").exists()
    assert (tmp_path / "classes.txt").read_text().splitlines() == list(NAMES)
    data = yaml.safe_load((tmp_path / "data.yaml").read_text())
    assert data["nc"] == 3
    assert data["names"] == {0: "circle", 1: "square", 2: "triangle"}
    assert (tmp_path / data["path"] / data["train"] / f"{slug}.png").is_file()
    image = read_png((tmp_path / "images" / f"{slug}.png").read_bytes())
    assert np.array_equal(image, DATASET.items[0].image)


def test_export_refuses_unknown_formats_and_classes(tmp_path: Path) -> None:
    with pytest.raises(DatasetError):
        export(DATASET, tmp_path, format="voc", class_names=NAMES)
    with pytest.raises(DatasetError, match="outside"):
        export(DATASET, tmp_path, format="coco", class_names=NAMES[:2])


def test_cli_export_from_a_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = SqliteRecordStore(tmp_path / "c.db")
    pixels = np.full((80, 100, 3), 40, np.uint8)
    for seq, truth in ((1, True), (2, False)):
        sample = Sample(
            model_version="shapes-1", reason="few", width=100, height=80,
            regions=whole_frame(pixels), class_ids=np.array([1], np.uint16),
            scores=np.array([0.8], np.float32), boxes=np.array([[0, 0, 50, 40]], np.float32),
            truth_class_ids=np.array([2], np.uint16) if truth else None,
            truth_boxes=np.array([[10, 20, 30, 60]], np.float32) if truth else None,
        )
        payload = encode_sample(origin="cam-1", epoch=7, seq=seq, ts_ms=seq, sample=sample)
        store.insert([IncomingRecord(
            site="s1", origin="cam-1", epoch=7, seq=seq, kind=int(Kind.SAMPLE), ts_ms=seq,
            stored_ms=seq, gateway="gw", detections=1, payload=payload,
        )])
    store.close()
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    base = ["dataset", "export", "--store", str(tmp_path / "c.db"), "--json"]

    args = parser.parse_args([*base, "--out", str(tmp_path / "coco"), "--format", "coco"])
    assert args.handler(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["images"], summary["annotations"], summary["skipped_unlabelled"]) == (1, 1, 1)
    doc = json.loads((tmp_path / "coco" / "annotations.json").read_text())
    assert (doc["annotations"][0]["category_id"], doc["annotations"][0]["bbox"]) == (
        3, [10, 20, 20, 40]
    )

    args = parser.parse_args([*base, "--out", str(tmp_path / "yolo"), "--format", "yolo",
                              "--labeller", "predictions"])
    assert args.handler(args) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 2
    rows = [p.read_text().split() for p in (tmp_path / "yolo" / "labels").iterdir()]
    assert len(rows) == 2
    for row in rows:  # the wire quantises prediction boxes, so allow a hair
        assert row[0] == "1"
        assert [float(v) for v in row[1:]] == pytest.approx([0.25, 0.25, 0.5, 0.5], abs=1e-4)
