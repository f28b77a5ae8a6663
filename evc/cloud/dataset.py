"""The cloud's dataset of hard examples: the SAMPLE records devices uploaded, as labelled images.

A :class:`Dataset` is built from the record store (one site or all, a time range), kept in
memory, labelled by any :class:`~evc.cloud.labelling.Labeller`, saved to and loaded from a
directory of our own (``dataset.json`` plus one ``.npy`` frame per item), and exported to COCO
or YOLO (:mod:`evc.cloud.export`) or handed to a trainer (:mod:`evc.cloud.trainer`).

Every item keeps what the device sent: the pixels (the whole frame, or crops pasted onto a
black frame), the device's predictions, its model version, why it was sampled and its meta.
Labels are always boxes in frame pixels (x1, y1, x2, y2) with class ids.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from evc.errors import EvcError, WireError
from evc.wire import Kind, Region, Sample, decode, sample_from

if TYPE_CHECKING:
    from evc.cloud.labelling import Labeller
    from evc.cloud.store import SqliteRecordStore

_INDEX_FILE = "dataset.json"
_FRAMES_DIR = "frames"
_FORMAT = "evc-dataset/1"


class DatasetError(EvcError):
    """A dataset could not be built, saved or loaded."""


@dataclass(frozen=True, slots=True)
class ItemId:
    """Where a sample came from: the idempotency key of its SAMPLE record."""

    site: str
    origin: str
    epoch: int
    seq: int

    def __str__(self) -> str:
        return f"{self.site}/{self.origin}/{self.epoch}/{self.seq}"

    @property
    def slug(self) -> str:
        """The id as one file name: ``+`` never occurs in site or device names, so it is
        unambiguous."""
        return f"{self.site}+{self.origin}+{self.epoch}+{self.seq}"


@dataclass(frozen=True, slots=True)
class Labels:
    """What is in an image: ``[n]`` class ids and ``[n, 4]`` x1, y1, x2, y2 frame-pixel boxes.

    Attributes:
        source: the name of the labeller that made them, so nobody mistakes pseudo-labels
            or synthetic ground truth for a person's work.
    """

    class_ids: npt.NDArray[np.int64]
    boxes: npt.NDArray[np.float32]
    source: str

    def __post_init__(self) -> None:
        classes = np.asarray(self.class_ids, dtype=np.int64).reshape(-1)
        boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        if len(classes) != len(boxes):
            raise DatasetError(f"{len(classes)} label classes for {len(boxes)} boxes")
        # Frozen dataclass: normalise dtypes and shapes once, here.
        object.__setattr__(self, "class_ids", classes)
        object.__setattr__(self, "boxes", boxes)

    def __len__(self) -> int:
        return len(self.class_ids)


@dataclass(frozen=True, slots=True)
class Item:
    """One hard example: its id, when it was seen, the device's sample, and labels once made."""

    id: ItemId
    ts_ms: int
    sample: Sample
    labels: Labels | None = None

    @property
    def image(self) -> npt.NDArray[np.uint8]:
        """The ``(height, width, 3)`` frame: the whole frame, or its crops pasted on black."""
        return self.sample.frame()

    @property
    def whole_frame(self) -> bool:
        """True when the device sent the whole frame, not crops."""
        return self.sample.whole_frame

    def with_labels(self, labels: Labels | None) -> Item:
        """A copy of the item carrying ``labels``."""
        return replace(self, labels=labels)


@dataclass(frozen=True, slots=True)
class DatasetStats:
    """Counts of a dataset's items, for ``evc dataset stats``."""

    items: int
    labelled: int
    with_truth: int
    whole_frames: int
    by_site: dict[str, int] = field(default_factory=dict)
    by_device: dict[str, int] = field(default_factory=dict)
    by_reason: dict[str, int] = field(default_factory=dict)
    by_model: dict[str, int] = field(default_factory=dict)


class Dataset:
    """An in-memory, ordered collection of :class:`Item` (oldest first).

    Attributes:
        skipped: SAMPLE records of the store that did not decode (counted, not fatal: the
            store validated them at ingest, so this only happens across protocol changes).
    """

    def __init__(self, *, items: Iterable[Item], skipped: int = 0) -> None:
        self.items: list[Item] = list(items)
        self.skipped = skipped

    @classmethod
    def from_store(
        cls,
        store: SqliteRecordStore,
        *,
        site: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
    ) -> Dataset:
        """The SAMPLE records of ``store`` (one site or all, ``since_ms <= ts_ms < until_ms``).

        Raises:
            StoreError: the store cannot be read.
        """
        items, skipped = [], 0
        for row in store.iter_records(
            kind=int(Kind.SAMPLE), site=site, since_ms=since_ms, until_ms=until_ms
        ):
            try:
                sample = sample_from(decode(row.payload))
            except WireError:
                skipped += 1
                continue
            items.append(Item(ItemId(row.site, row.origin, row.epoch, row.seq), row.ts_ms, sample))
        return cls(items=items, skipped=skipped)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def labelled(self) -> list[Item]:
        """The items that carry labels."""
        return [item for item in self.items if item.labels is not None]

    def label(self, labeller: Labeller, *, overwrite: bool = False) -> Dataset:
        """A new dataset with every item ``labeller`` can label labelled by it.

        Args:
            labeller: what makes the labels; items it returns None for stay as they were.
            overwrite: replace labels an item already has (else they are kept).
        """
        items = []
        for item in self.items:
            labels = labeller.label(item) if item.labels is None or overwrite else None
            items.append(item if labels is None else item.with_labels(labels))
        return Dataset(items=items, skipped=self.skipped)

    def stats(self) -> DatasetStats:
        """How many items, labelled or not, by site, device, reason and model version."""
        return DatasetStats(
            items=len(self.items),
            labelled=len(self.labelled()),
            with_truth=sum(i.sample.truth_class_ids is not None for i in self.items),
            whole_frames=sum(i.whole_frame for i in self.items),
            by_site=dict(Counter(i.id.site for i in self.items)),
            by_device=dict(Counter(f"{i.id.site}/{i.id.origin}" for i in self.items)),
            by_reason=dict(Counter(i.sample.reason for i in self.items)),
            by_model=dict(Counter(i.sample.model_version for i in self.items)),
        )

    def save(self, directory: str | Path) -> Path:
        """Write ``dataset.json`` and one ``frames/<id>.npy`` per item into ``directory``.

        Raises:
            DatasetError: the directory cannot be written.
        """
        root = Path(directory)
        try:
            (root / _FRAMES_DIR).mkdir(parents=True, exist_ok=True)
            for item in self.items:
                np.save(root / _FRAMES_DIR / f"{item.id.slug}.npy", item.image)
            index = {"format": _FORMAT, "skipped": self.skipped,
                     "items": [_item_json(item) for item in self.items]}
            (root / _INDEX_FILE).write_text(json.dumps(index, indent=1) + "\n")
        except OSError as exc:
            raise DatasetError(f"cannot save dataset to {root}: {exc}") from exc
        return root

    @classmethod
    def load(cls, directory: str | Path) -> Dataset:
        """Read a dataset written by :meth:`save`.

        Raises:
            DatasetError: the directory does not hold a readable dataset.
        """
        root = Path(directory)
        try:
            index = json.loads((root / _INDEX_FILE).read_text())
            if index.get("format") != _FORMAT:
                raise DatasetError(f"{root / _INDEX_FILE} is not an {_FORMAT} index")
            items = [_item_from_json(entry, root / _FRAMES_DIR) for entry in index["items"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DatasetError(f"cannot load dataset from {root}: {exc}") from exc
        return cls(items=items, skipped=int(index.get("skipped", 0)))


def _boxes_json(boxes: npt.NDArray[np.floating]) -> list[list[float]]:
    return [[float(v) for v in box] for box in np.asarray(boxes).reshape(-1, 4)]


def _item_json(item: Item) -> dict[str, Any]:
    sample = item.sample
    entry: dict[str, Any] = {
        "id": {"site": item.id.site, "origin": item.id.origin,
               "epoch": item.id.epoch, "seq": item.id.seq},
        "ts_ms": item.ts_ms, "model": sample.model_version, "reason": sample.reason,
        "width": sample.width, "height": sample.height,
        "regions": [list(region.box) for region in sample.regions],
        "det": {"class_ids": [int(c) for c in sample.class_ids],
                "scores": [float(s) for s in sample.scores], "boxes": _boxes_json(sample.boxes)},
        "meta": dict(sample.meta),
    }
    if sample.truth_class_ids is not None and sample.truth_boxes is not None:
        entry["truth"] = {"class_ids": [int(c) for c in sample.truth_class_ids],
                          "boxes": _boxes_json(sample.truth_boxes)}
    if item.labels is not None:
        entry["labels"] = {"class_ids": [int(c) for c in item.labels.class_ids],
                           "boxes": _boxes_json(item.labels.boxes), "source": item.labels.source}
    return entry


def _array(values: Sequence[Any], dtype: type[np.generic], columns: int = 0) -> Any:
    array = np.asarray(values, dtype=dtype)
    return array.reshape(-1, columns) if columns else array.reshape(-1)


def _item_from_json(entry: Mapping[str, Any], frames: Path) -> Item:
    ident = ItemId(**entry["id"])
    frame = np.load(frames / f"{ident.slug}.npy", allow_pickle=False)
    regions = tuple(
        Region((x1, y1, x2, y2), frame[y1:y2, x1:x2]) for x1, y1, x2, y2 in entry["regions"]
    )
    truth = entry.get("truth")
    sample = Sample(
        model_version=entry["model"], reason=entry["reason"],
        width=entry["width"], height=entry["height"], regions=regions,
        class_ids=_array(entry["det"]["class_ids"], np.uint16),
        scores=_array(entry["det"]["scores"], np.float32),
        boxes=_array(entry["det"]["boxes"], np.float32, 4),
        truth_class_ids=None if truth is None else _array(truth["class_ids"], np.uint16),
        truth_boxes=None if truth is None else _array(truth["boxes"], np.float32, 4),
        meta=entry["meta"],
    )
    labels = entry.get("labels")
    return Item(
        ident, entry["ts_ms"], sample,
        None if labels is None else Labels(
            _array(labels["class_ids"], np.int64), _array(labels["boxes"], np.float32, 4),
            labels["source"],
        ),
    )
