"""Export a labelled dataset for labelling and training tools: COCO JSON or YOLO txt.

Only labelled items are exported (the others are counted as skipped). Images are written as
PNG beside the labels. No installed package writes PNG (there is no Pillow, OpenCV or imageio
in EVC's dependencies, and neither numpy nor onnx has an encoder), so :func:`write_png` is a
minimal writer with the standard library's ``zlib`` and ``struct``: 8-bit RGB, no interlace,
filter type 0 on every row. Lossless, so the exported pixels are exactly the device's.

Layouts::

    COCO                                   YOLO
    out/annotations.json                   out/images/<id>.png
    out/images/<id>.png                    out/labels/<id>.txt   class cx cy w h (0..1)
                                           out/classes.txt       one name a line
                                           out/data.yaml         path, train, val, nc, names

COCO ``bbox`` is ``[x, y, width, height]`` in pixels; category ids are the class ids plus one
(COCO keeps 0 free), with ``name`` from the class names.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import yaml

from evc.cloud.dataset import Dataset, DatasetError, Item, Labels

FORMATS = ("coco", "yolo")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IMAGES_DIR = "images"


@dataclass(frozen=True, slots=True)
class ExportResult:
    """What an export wrote."""

    format: str
    directory: Path
    images: int
    annotations: int
    skipped_unlabelled: int


def _chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC-32 of type and data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(image: npt.NDArray[np.uint8]) -> bytes:
    """The PNG bytes of an ``(rows, cols, 3)`` uint8 RGB image.

    Raises:
        DatasetError: the array is not 8-bit RGB.
    """
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3 or 0 in array.shape:
        raise DatasetError(f"PNG needs (rows, cols, 3) uint8, got {array.shape} {array.dtype}")
    rows, cols = array.shape[:2]
    # Colour type 2 is truecolour RGB; compression, filter method and interlace are all 0.
    header = struct.pack(">IIBBBBB", cols, rows, 8, 2, 0, 0, 0)
    # Every scanline starts with its filter type byte, 0 (none).
    scanlines = np.concatenate(
        [np.zeros((rows, 1), dtype=np.uint8), np.ascontiguousarray(array).reshape(rows, -1)],
        axis=1,
    )
    return b"".join([
        _PNG_SIGNATURE,
        _chunk(b"IHDR", header),
        _chunk(b"IDAT", zlib.compress(scanlines.tobytes(), 6)),
        _chunk(b"IEND", b""),
    ])


def write_png(path: str | Path, image: npt.NDArray[np.uint8]) -> None:
    """Write ``image`` (``(rows, cols, 3)`` uint8 RGB) to ``path`` as PNG."""
    Path(path).write_bytes(encode_png(image))


def export(
    dataset: Dataset, out: str | Path, *, format: str, class_names: Sequence[str]
) -> ExportResult:
    """Export the labelled items of ``dataset`` to ``out`` as ``format`` (``coco`` or ``yolo``).

    Raises:
        DatasetError: an unknown format, a label outside ``class_names``, or a write failed.
    """
    if format == "coco":
        return export_coco(dataset, out, class_names=class_names)
    if format == "yolo":
        return export_yolo(dataset, out, class_names=class_names)
    raise DatasetError(f"unknown export format {format!r}; use one of {', '.join(FORMATS)}")


def _labelled(dataset: Dataset, class_names: Sequence[str]) -> list[tuple[Item, Labels]]:
    """Every labelled item with its labels, checked against ``class_names``."""
    pairs = [(item, item.labels) for item in dataset if item.labels is not None]
    for item, labels in pairs:
        bad = [int(c) for c in labels.class_ids if not 0 <= c < len(class_names)]
        if bad:
            raise DatasetError(f"item {item.id} has class ids {bad} outside {list(class_names)}")
    return pairs


def _write_images(items: Sequence[tuple[Item, Labels]], root: Path) -> None:
    (root / _IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    for item, _ in items:
        write_png(root / _IMAGES_DIR / f"{item.id.slug}.png", item.image)


def coco_document(
    items: Sequence[tuple[Item, Labels]], class_names: Sequence[str]
) -> dict[str, Any]:
    """The COCO detection document of ``(item, labels)`` pairs (images numbered from 1)."""
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id, (item, labels) in enumerate(items, start=1):
        images.append({
            "id": image_id, "file_name": f"{_IMAGES_DIR}/{item.id.slug}.png",
            "width": item.sample.width, "height": item.sample.height,
            "evc_id": str(item.id), "evc_reason": item.sample.reason,
            "evc_model": item.sample.model_version, "evc_labels": labels.source,
        })
        for cls, (x1, y1, x2, y2) in zip(labels.class_ids, labels.boxes, strict=True):
            w, h = float(x2 - x1), float(y2 - y1)
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": int(cls) + 1,
                "bbox": [round(float(x1), 3), round(float(y1), 3), round(w, 3), round(h, 3)],
                "area": round(w * h, 3), "iscrowd": 0,
            })
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(class_names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def export_coco(dataset: Dataset, out: str | Path, *, class_names: Sequence[str]) -> ExportResult:
    """Write ``annotations.json`` and ``images/*.png`` for the labelled items."""
    root = Path(out)
    items = _labelled(dataset, class_names)
    document = coco_document(items, class_names)
    try:
        _write_images(items, root)
        (root / "annotations.json").write_text(json.dumps(document, indent=1) + "\n")
    except OSError as exc:
        raise DatasetError(f"cannot export COCO to {root}: {exc}") from exc
    return ExportResult("coco", root, len(items), len(document["annotations"]),
                        len(dataset) - len(items))


def yolo_lines(labels: Labels, *, width: int, height: int) -> list[str]:
    """YOLO label lines: ``class cx cy w h``, normalised by the image's size to 0..1."""
    lines = []
    for cls, (x1, y1, x2, y2) in zip(labels.class_ids, labels.boxes, strict=True):
        cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
        w, h = (x2 - x1) / width, (y2 - y1) / height
        lines.append(f"{int(cls)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
    return lines


def _data_yaml(class_names: Sequence[str]) -> str:
    document = {
        "path": ".", "train": _IMAGES_DIR, "val": _IMAGES_DIR, "nc": len(class_names),
        "names": dict(enumerate(class_names)),
    }
    text: str = yaml.safe_dump(document, sort_keys=False)
    return text


def export_yolo(dataset: Dataset, out: str | Path, *, class_names: Sequence[str]) -> ExportResult:
    """Write ``images/*.png``, ``labels/*.txt``, ``classes.txt`` and ``data.yaml``."""
    root = Path(out)
    items = _labelled(dataset, class_names)
    annotations = 0
    try:
        _write_images(items, root)
        (root / "labels").mkdir(parents=True, exist_ok=True)
        for item, labels in items:
            lines = yolo_lines(labels, width=item.sample.width, height=item.sample.height)
            annotations += len(lines)
            text = "".join(line + "\n" for line in lines)
            (root / "labels" / f"{item.id.slug}.txt").write_text(text)
        (root / "classes.txt").write_text("".join(name + "\n" for name in class_names))
        (root / "data.yaml").write_text(_data_yaml(class_names))
    except OSError as exc:
        raise DatasetError(f"cannot export YOLO to {root}: {exc}") from exc
    return ExportResult("yolo", root, len(items), annotations, len(dataset) - len(items))
