"""docs/PROTOCOL.md stays true: its snippet runs, its hex dump and sizes match the codec."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from evc.device.simulate import synthetic_detections
from evc.errors import WireError
from evc.wire import Channel, Kind, encode_detections

DOC = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"
# The inputs of the worked example, as the document states them.
EXAMPLE = {
    "origin": "cam-01",
    "epoch": 1764201600,
    "seq": 42,
    "ts_ms": 1764201612345,
    "model_version": "yolov8n@3",
    "width": 640,
    "height": 480,
    "class_ids": [0, 2],
    "scores": [0.91, 0.47],
    "boxes": [[12.5, 40, 96.25, 200], [300, 120.5, 410, 330]],
}


def _doc() -> str:
    return DOC.read_text()


def _fences(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", _doc(), flags=re.MULTILINE | re.DOTALL)


def _run_snippet(capsys: pytest.CaptureFixture[str]) -> tuple[dict[str, object], str]:
    (code,) = _fences("python")
    namespace: dict[str, object] = {"__name__": "protocol_snippet"}
    # Running the documented code is the point of this test; it is our own file.
    exec(compile(code, str(DOC), "exec"), namespace)  # noqa: S102
    return namespace, capsys.readouterr().out


def test_python_snippet_runs_and_prints_what_the_doc_says(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, printed = _run_snippet(capsys)
    documented = next(block for block in _fences("text") if block.startswith("cam-01:"))

    assert printed == documented


def test_snippet_frame_is_what_the_codec_produces(capsys: pytest.CaptureFixture[str]) -> None:
    namespace, _ = _run_snippet(capsys)

    assert namespace["FRAME"] == encode_detections(**EXAMPLE)


def test_annotated_hex_dump_matches_the_codec_byte_for_byte() -> None:
    frame = encode_detections(**EXAMPLE)
    dump = next(block for block in _fences("text") if block.startswith("off "))
    offset, data = 0, b""
    for line in dump.splitlines()[1:]:
        off, hex_bytes, *_ = re.split(r"\s{2,}", line)
        assert int(off) == offset, f"wrong offset on: {line}"
        chunk = bytes.fromhex(hex_bytes)
        data += chunk
        offset += len(chunk)

    assert data == frame
    assert f"**{len(frame)} bytes**" in _doc()


def test_documented_ten_detection_size_is_measured() -> None:
    classes, scores, boxes = synthetic_detections(np.random.default_rng(0), 10)
    frame = encode_detections(
        **{**EXAMPLE, "seq": 1_000_000, "class_ids": classes, "scores": scores, "boxes": boxes}
    )

    assert f"**{len(frame)} bytes**" in _doc()


def test_every_kind_channel_and_error_reason_is_documented() -> None:
    doc = _doc()
    reasons = {error.reason for error in WireError.__subclasses__()}

    assert all(f"{kind.value} {kind.name}" in doc for kind in Kind)
    assert all(f"`{channel.value}`" in doc for channel in Channel)
    assert all(f"`{reason}`" in doc for reason in reasons)
