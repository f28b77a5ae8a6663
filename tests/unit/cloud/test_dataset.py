"""The dataset of hard examples: built from stored SAMPLE records, labelled, saved, counted."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from evc.cli.dataset import add_commands
from evc.cloud.dataset import Dataset, DatasetError, ItemId, Labels
from evc.cloud.labelling import PredictionLabeller, SyntheticTruthLabeller, clip_to_regions
from evc.cloud.store import IncomingRecord, SqliteRecordStore
from evc.wire import Kind, Region, Sample, crops, encode_sample, whole_frame


def image(rows: int = 80, cols: int = 100, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (rows, cols, 3), dtype=np.uint8)


def sample(
    *,
    pixels: np.ndarray | None = None,
    regions: tuple[Region, ...] | None = None,
    truth: tuple[list[int], list[list[float]]] | None = None,
    det: tuple[list[int], list[float], list[list[float]]] = ([], [], []),
    reason: str = "few",
) -> Sample:
    pixels = image() if pixels is None else pixels
    classes, scores, boxes = det
    return Sample(
        model_version="shapes-1", reason=reason, width=pixels.shape[1], height=pixels.shape[0],
        regions=whole_frame(pixels) if regions is None else regions,
        class_ids=np.array(classes, np.uint16), scores=np.array(scores, np.float32),
        boxes=np.array(boxes, np.float32).reshape(-1, 4),
        truth_class_ids=None if truth is None else np.array(truth[0], np.uint16),
        truth_boxes=None if truth is None else np.array(truth[1], np.float32).reshape(-1, 4),
        meta={"camera": "gate"},
    )


def put(
    store: SqliteRecordStore, item: Sample, *, site: str = "s1", origin: str = "cam-1",
    seq: int = 1, ts_ms: int = 1000,
) -> None:
    payload = encode_sample(origin=origin, epoch=7, seq=seq, ts_ms=ts_ms, sample=item)
    store.insert([IncomingRecord(
        site=site, origin=origin, epoch=7, seq=seq, kind=int(Kind.SAMPLE), ts_ms=ts_ms,
        stored_ms=ts_ms, gateway="gw", detections=len(item.scores), payload=payload,
    )])


TRUTH = ([0, 2], [[10.0, 10.0, 30.0, 30.0], [60.0, 20.0, 80.0, 40.0]])


def test_store_reads_samples_by_kind_site_and_time(tmp_path: Path) -> None:
    store = SqliteRecordStore(tmp_path / "c.db")
    put(store, sample(), seq=1, ts_ms=1000)
    put(store, sample(), seq=2, ts_ms=3000)
    put(store, sample(), site="s2", seq=1, ts_ms=2000)
    store.insert([IncomingRecord(
        site="s1", origin="cam-1", epoch=7, seq=3, kind=int(Kind.DETECTIONS), ts_ms=1500,
        stored_ms=1, gateway="gw", detections=0, payload=b"not a sample",
    )])
    assert [(r.site, r.seq) for r in store.iter_records(kind=4)] == [
        ("s1", 1), ("s2", 1), ("s1", 2)
    ]  # oldest first, detections left out
    assert [r.seq for r in store.iter_records(kind=4, site="s1")] == [1, 2]
    assert [r.ts_ms for r in store.iter_records(kind=4, since_ms=2000, until_ms=3000)] == [2000]


def test_dataset_from_store_keeps_what_the_device_sent(tmp_path: Path) -> None:
    store = SqliteRecordStore(tmp_path / "c.db")
    pixels = image()
    put(store, sample(pixels=pixels, truth=TRUTH, det=([1], [0.4], [[1, 2, 3, 4]])), seq=5)
    put(store, sample(reason="near_threshold"), site="s2", seq=6, ts_ms=500)
    dataset = Dataset.from_store(store, site="s1")
    assert len(dataset) == 1
    item = dataset.items[0]
    assert item.id == ItemId("s1", "cam-1", 7, 5)
    assert str(item.id) == "s1/cam-1/7/5"
    assert np.array_equal(item.image, pixels)
    assert item.whole_frame
    assert item.sample.reason == "few"
    assert item.sample.model_version == "shapes-1"
    assert dict(item.sample.meta) == {"camera": "gate"}
    assert item.sample.class_ids.tolist() == [1]
    assert item.labels is None
    assert len(Dataset.from_store(store)) == 2


def test_undecodable_sample_records_are_counted_not_fatal(tmp_path: Path) -> None:
    store = SqliteRecordStore(tmp_path / "c.db")
    put(store, sample())
    store.insert([IncomingRecord(
        site="s1", origin="cam-1", epoch=7, seq=9, kind=int(Kind.SAMPLE), ts_ms=1, stored_ms=1,
        gateway="gw", detections=0, payload=b"\x00garbage",
    )])
    dataset = Dataset.from_store(store)
    assert (len(dataset), dataset.skipped) == (1, 1)


def test_truth_labeller_labels_whole_frames_and_says_where_labels_come_from() -> None:
    dataset = Dataset(items=[])
    labelled = _one(sample(truth=TRUTH)).label(SyntheticTruthLabeller())
    labels = labelled.items[0].labels
    assert labels is not None
    assert labels.class_ids.tolist() == [0, 2]
    assert labels.boxes.tolist() == TRUTH[1]
    assert labels.source == "synthetic-truth"
    assert "ground truth" in (SyntheticTruthLabeller.__doc__ or "")
    assert len(dataset.label(SyntheticTruthLabeller())) == 0


def test_truth_labeller_leaves_samples_without_truth_unlabelled() -> None:
    dataset = _one(sample()).label(SyntheticTruthLabeller())
    assert dataset.items[0].labels is None
    assert dataset.labelled() == []


def test_crops_keep_only_truth_inside_them_clipped() -> None:
    pixels = image()
    # Region A (5, 5, 40, 40) holds box 0 whole and 25/400 of box 1 (dropped); region B
    # (50, 10, 75, 50) holds 300/400 of box 2, clipped at x = 75.
    regions = (Region((5, 5, 40, 40), pixels[5:40, 5:40]),
               Region((50, 10, 75, 50), pixels[10:50, 50:75]))
    truth = ([0, 1, 2], [[10, 10, 30, 30], [35, 35, 55, 55], [60, 20, 80, 40]])
    dataset = _one(sample(pixels=pixels, regions=regions, truth=truth))
    item = dataset.items[0]
    assert not item.whole_frame
    assert item.image[0, 0].tolist() == [0, 0, 0]  # outside the crops: black
    assert np.array_equal(item.image[5:40, 5:40], pixels[5:40, 5:40])
    labels = dataset.label(SyntheticTruthLabeller()).items[0].labels
    assert labels is not None
    assert labels.class_ids.tolist() == [0, 2]
    assert labels.boxes.tolist() == [[10, 10, 30, 30], [60, 20, 75, 40]]


def test_clip_to_regions_takes_the_region_a_box_overlaps_most() -> None:
    pixels = image()
    regions = (Region((0, 0, 20, 80), pixels[:, :20]), Region((20, 0, 100, 80), pixels[:, 20:]))
    classes, boxes = clip_to_regions([1], [[10, 0, 40, 10]], regions)
    assert classes.tolist() == [1]
    assert boxes.tolist() == [[20, 0, 40, 10]]  # 2/3 of it lies in the second region


def test_prediction_labeller_keeps_predictions_above_its_score() -> None:
    item = sample(det=([0, 1, 2], [0.9, 0.3, 0.5], [[1, 1, 9, 9], [2, 2, 8, 8], [3, 3, 7, 7]]))
    labels = _one(item).label(PredictionLabeller(min_score=0.5)).items[0].labels
    assert labels is not None
    assert labels.class_ids.tolist() == [0, 2]
    assert labels.boxes.tolist() == [[1, 1, 9, 9], [3, 3, 7, 7]]
    assert labels.source == "predictions"


def test_prediction_labeller_on_crops_drops_predictions_outside_them() -> None:
    pixels = image()
    regions = crops(pixels, [[10, 10, 30, 30]], margin=2)
    item = sample(pixels=pixels, regions=regions,
                  det=([0, 1], [0.9, 0.9], [[10, 10, 30, 30], [60, 20, 80, 40]]))
    labels = _one(item).label(PredictionLabeller()).items[0].labels
    assert labels is not None
    assert labels.class_ids.tolist() == [0]


def test_labels_are_kept_unless_overwritten() -> None:
    dataset = _one(sample(truth=TRUTH, det=([1], [0.9], [[0, 0, 5, 5]])))
    truth = dataset.label(SyntheticTruthLabeller())
    assert truth.label(PredictionLabeller()).items[0].labels.source == "synthetic-truth"  # type: ignore[union-attr]
    again = truth.label(PredictionLabeller(), overwrite=True).items[0].labels
    assert again is not None
    assert again.source == "predictions"


def test_labels_refuse_mismatched_classes_and_boxes() -> None:
    with pytest.raises(DatasetError):
        Labels(np.array([0, 1]), np.zeros((1, 4), np.float32), "x")


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    pixels = image()
    regions = crops(pixels, [[10, 10, 30, 30]])
    dataset = Dataset(items=[
        *_one(sample(pixels=pixels, truth=TRUTH)).label(SyntheticTruthLabeller()).items,
        *_one(sample(pixels=pixels, regions=regions, det=([1], [0.7], [[10, 10, 30, 30]])),
              seq=2).items,
    ])
    loaded = Dataset.load(dataset.save(tmp_path / "ds"))
    assert len(loaded) == 2
    for before, after in zip(dataset, loaded, strict=True):
        assert after.id == before.id
        assert np.array_equal(after.image, before.image)
        assert after.sample.regions[0].box == before.sample.regions[0].box
        assert after.sample.scores.tolist() == before.sample.scores.tolist()
        assert dict(after.sample.meta) == dict(before.sample.meta)
    first = loaded.items[0].labels
    assert first is not None
    assert (first.boxes.tolist(), first.source) == (TRUTH[1], "synthetic-truth")
    assert loaded.items[0].sample.truth_class_ids.tolist() == [0, 2]  # type: ignore[union-attr]
    assert loaded.items[1].labels is None
    assert loaded.items[1].sample.truth_boxes is None


def test_load_refuses_a_directory_without_a_dataset(tmp_path: Path) -> None:
    with pytest.raises(DatasetError):
        Dataset.load(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(DatasetError):
        Dataset.load(tmp_path)


def _one(item: Sample, *, seq: int = 1) -> Dataset:
    from evc.cloud.dataset import Item  # noqa: PLC0415 - only these helpers build items

    return Dataset(items=[Item(ItemId("s1", "cam-1", 7, seq), 1000, item)])


def _fill(path: Path) -> None:
    store = SqliteRecordStore(path)
    put(store, sample(truth=TRUTH), seq=1)
    put(store, sample(truth=TRUTH, reason="near_threshold"), origin="cam-2", seq=1)
    put(store, sample(), site="s2", seq=1)
    store.close()


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    args = parser.parse_args(argv)
    result: int = args.handler(args)
    return result


def test_cli_stats_counts_by_site_device_reason_and_labels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fill(tmp_path / "c.db")
    assert _run(["dataset", "stats", "--store", str(tmp_path / "c.db"), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["samples"], stats["labelled"], stats["unlabelled"]) == (3, 2, 1)
    assert stats["by_site"] == {"s1": 2, "s2": 1}
    assert stats["by_device"] == {"s1/cam-1": 1, "s1/cam-2": 1, "s2/cam-1": 1}
    assert stats["by_reason"] == {"few": 2, "near_threshold": 1}
    assert stats["labeller"] == "synthetic-truth"


def test_cli_stats_of_one_site_and_of_a_missing_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fill(tmp_path / "c.db")
    assert _run(["dataset", "stats", "--store", str(tmp_path / "c.db"), "--site", "s2"]) == 0
    out = capsys.readouterr().out
    assert "samples: 1" in out
    assert "labelled: 0" in out
    assert _run(["dataset", "stats", "--store", str(tmp_path / "none.db")]) == 1
    assert not (tmp_path / "none.db").exists()
