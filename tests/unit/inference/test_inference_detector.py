"""Unit tests of the Detector, end to end through tiny ONNX graphs built in the test."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from evc.errors import (
    ConfigError,
    EvcError,
    FrameError,
    ModelError,
    ModelInputError,
    ModelLoadError,
    ModelMetadataError,
    ModelNotFoundError,
    ModelOutputError,
)
from evc.inference import Detections, Detector
from evc.wire import decode, detections_from, encode_detections

ULTRALYTICS_NAMES = "{0: 'person', 1: 'bicycle'}"
# Two objects predicted in the 32 x 32 input: a person and, overlapping it, a weaker duplicate;
# a bicycle elsewhere; and an anchor below any sensible threshold.
ANCHORS = np.array(
    [
        # cx, cy,  w,  h, person, bicycle
        [12.0, 16.0, 8.0, 8.0, 0.90, 0.05],
        [12.5, 16.0, 8.0, 8.0, 0.60, 0.02],
        [24.0, 16.0, 4.0, 16.0, 0.10, 0.80],
        [4.0, 4.0, 2.0, 2.0, 0.10, 0.15],
    ],
    dtype=np.float32,
)


def save_model(
    path: Path,
    output: npt.NDArray[np.float32],
    *,
    input_shape: list[int | str] | None = None,
    output_shape: list[int | str] | None = None,
    metadata: dict[str, str] | None = None,
    input_type: int = TensorProto.FLOAT,
) -> Path:
    """Save a graph whose single output is ``output`` (plus 0 x the input, to use the input)."""
    input_shape = input_shape or [1, 3, 32, 32]
    nodes = [
        helper.make_node("ReduceMax", ["images"], ["peak"], keepdims=0),
        helper.make_node("Cast", ["peak"], ["peak32"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["peak32", "zero"], ["nothing"]),
        helper.make_node("Add", ["table", "nothing"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_yolo",
        [helper.make_tensor_value_info("images", input_type, input_shape)],
        [
            helper.make_tensor_value_info(
                "output0", TensorProto.FLOAT, output_shape or list(output.shape)
            )
        ],
        initializer=[
            numpy_helper.from_array(output, "table"),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if metadata:
        helper.set_model_props(model, metadata)
    onnx.save(model, path)
    return path


def yolo_model(tmp_path: Path, **kwargs: object) -> Path:
    """A 2-class model in the Ultralytics ``[1, 4+nc, N]`` layout with Ultralytics metadata."""
    metadata = {
        "author": "Ultralytics",
        "version": "8.3.0",
        "task": "detect",
        "imgsz": "[32, 32]",
        "names": ULTRALYTICS_NAMES,
        "args": "{'batch': 1, 'half': False, 'dynamic': False, 'nms': False}",
    }
    return save_model(
        tmp_path / "tiny.onnx",
        ANCHORS.T[None].copy(),
        metadata=kwargs.pop("metadata", metadata),  # type: ignore[arg-type]
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return yolo_model(tmp_path)


class TestEndToEnd:
    def test_detects_and_maps_boxes_to_the_frame(self, model: Path) -> None:
        detector = Detector(model)
        # 64 x 48 frame -> scale 0.5, 4 rows of padding above and below in the 32 x 32 input.
        found = detector(np.zeros((48, 64, 3), np.uint8))
        assert isinstance(found, Detections)
        assert (found.width, found.height) == (64, 48)
        assert found.class_ids.tolist() == [0, 1]
        np.testing.assert_allclose(found.scores, [0.9, 0.8], rtol=1e-6)
        np.testing.assert_allclose(found.boxes, [[16, 16, 32, 32], [44, 8, 52, 40]])
        assert found.class_ids.dtype == np.uint16
        assert found.scores.dtype == np.float32
        assert found.boxes.dtype == np.float32
        assert len(found) == 2
        assert min(found.preprocess_ms, found.inference_ms, found.postprocess_ms) >= 0

    def test_detections_go_straight_into_the_wire_codec(self, model: Path) -> None:
        detector = Detector(model)
        found = detector(np.zeros((48, 64, 3), np.uint8), bgr=True)
        payload = encode_detections(
            origin="cam-1",
            epoch=1,
            seq=1,
            ts_ms=0,
            model_version=detector.model_version,
            width=found.width,
            height=found.height,
            class_ids=found.class_ids,
            scores=found.scores,
            boxes=found.boxes,
        )
        frame = detections_from(decode(payload))
        assert frame.class_ids.tolist() == [0, 1]
        np.testing.assert_allclose(frame.boxes, found.boxes, atol=0.01)

    def test_reads_input_size_names_and_version(self, model: Path) -> None:
        detector = Detector(model, warmup=False)
        assert detector.input_size == (32, 32)
        assert detector.class_names == ("person", "bicycle")
        assert detector.num_classes == 2
        assert detector.providers == ("CPUExecutionProvider",)
        # Ultralytics' "version" is the exporter's, so the file hash stands in.
        digest = hashlib.sha256(model.read_bytes()).hexdigest()
        assert detector.model_version == digest[:12]

    def test_transposed_output_layout(self, tmp_path: Path) -> None:
        # The class axis is told from the anchors axis by being the shorter one.
        table = np.vstack([ANCHORS, np.zeros((6, 6), np.float32)])
        path = save_model(tmp_path / "t.onnx", table[None].copy())
        found = Detector(path)(np.zeros((32, 32, 3), np.uint8))
        assert found.class_ids.tolist() == [0, 1]

    def test_half_precision_input(self, tmp_path: Path) -> None:
        path = save_model(
            tmp_path / "half.onnx", ANCHORS.T[None].copy(), input_type=TensorProto.FLOAT16
        )
        found = Detector(path)(np.zeros((32, 32, 3), np.uint8))
        assert found.class_ids.tolist() == [0, 1]

    def test_input_of_another_type_is_rejected(self, tmp_path: Path) -> None:
        path = save_model(
            tmp_path / "u8.onnx", ANCHORS.T[None].copy(), input_type=TensorProto.UINT8
        )
        with pytest.raises(ModelInputError, match=r"tensor\(float\).*got tensor\(uint8\)"):
            Detector(path)

    def test_dynamic_axes_use_metadata_imgsz(self, tmp_path: Path) -> None:
        path = save_model(
            tmp_path / "dyn.onnx",
            ANCHORS.T[None].copy(),
            input_shape=["batch", 3, "height", "width"],
            output_shape=["batch", "channels", "anchors"],
            metadata={"imgsz": "[32, 48]", "names": ULTRALYTICS_NAMES},
        )
        detector = Detector(path, warmup=False)
        assert detector.input_size == (32, 48)
        assert detector.num_classes == 2

    def test_dynamic_axes_default_to_640(self, tmp_path: Path) -> None:
        path = save_model(
            tmp_path / "dyn.onnx",
            ANCHORS.T[None].copy(),
            input_shape=["batch", 3, "height", "width"],
        )
        assert Detector(path, warmup=False).input_size == (640, 640)


class TestSettings:
    def test_thresholds(self, model: Path) -> None:
        frame = np.zeros((32, 32, 3), np.uint8)
        strict = Detector(model, conf_threshold=0.85)(frame)
        assert strict.class_ids.tolist() == [0]
        loose = Detector(model, conf_threshold=0.1, iou_threshold=0.99)(frame)
        assert loose.class_ids.tolist() == [0, 1, 0, 1]
        capped = Detector(model, conf_threshold=0.1, iou_threshold=0.99, max_detections=2)(frame)
        np.testing.assert_allclose(capped.scores, [0.9, 0.8], rtol=1e-6)

    def test_class_names_from_config_override_metadata(self, model: Path) -> None:
        detector = Detector(model, class_names=["worker", "cart"], warmup=False)
        assert detector.class_names == ("worker", "cart")
        detector = Detector(model, class_names={1: "cart", 0: "worker"}, warmup=False)
        assert detector.class_names == ("worker", "cart")

    def test_names_are_invented_without_metadata(self, tmp_path: Path) -> None:
        path = save_model(tmp_path / "bare.onnx", ANCHORS.T[None].copy())
        assert Detector(path, warmup=False).class_names == ("class0", "class1")

    @pytest.mark.parametrize(
        ("metadata", "expected"),
        [
            ({"evc_model_version": "forklift-7", "version": "8.3.0"}, "forklift-7"),
            ({"version": "2024.06.1"}, "2024.06.1"),
        ],
    )
    def test_model_version_from_metadata(
        self, tmp_path: Path, metadata: dict[str, str], expected: str
    ) -> None:
        path = save_model(tmp_path / "v.onnx", ANCHORS.T[None].copy(), metadata=metadata)
        assert Detector(path, warmup=False).model_version == expected
        assert Detector(path, warmup=False, model_version="pinned").model_version == "pinned"

    @pytest.mark.parametrize(
        "settings",
        [
            {"conf_threshold": 1.5},
            {"iou_threshold": -0.1},
            {"max_detections": 0},
            {"max_detections": 100_000},
            {"intra_op_threads": 0},
            {"interpolation": "cubic"},
        ],
    )
    def test_settings_out_of_range(self, model: Path, settings: dict[str, float]) -> None:
        with pytest.raises(ConfigError):
            Detector(model, **settings)  # type: ignore[arg-type]

    def test_threads_and_providers_are_passed_on(self, model: Path) -> None:
        detector = Detector(model, intra_op_threads=1, providers=["CPUExecutionProvider"])
        assert len(detector(np.zeros((8, 8, 3), np.uint8))) == 2
        detector = Detector(model, providers="CPUExecutionProvider", interpolation="bilinear")
        assert detector.providers == ("CPUExecutionProvider",)
        assert (detector.conf_threshold, detector.iou_threshold) == (0.25, 0.45)
        assert detector.max_detections == 300

    def test_bad_frame_is_a_typed_error(self, model: Path) -> None:
        with pytest.raises(FrameError):
            Detector(model)(np.zeros((8, 8), np.uint8))


class TestBadModels:
    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(ModelNotFoundError, match="not found") as caught:
            Detector(tmp_path / "absent.onnx")
        assert caught.value.path == str(tmp_path / "absent.onnx")

    def test_garbage_file(self, tmp_path: Path) -> None:
        path = tmp_path / "garbage.onnx"
        path.write_bytes(b"this is not a protobuf")
        with pytest.raises(ModelLoadError, match="expected an ONNX model") as caught:
            Detector(path)
        assert caught.value.__cause__ is not None

    def test_unavailable_provider(self, model: Path) -> None:
        with pytest.raises(ModelLoadError, match="NoSuchExecutionProvider"):
            Detector(model, providers=["NoSuchExecutionProvider"])

    def test_wrong_input_rank(self, tmp_path: Path) -> None:
        path = save_model(tmp_path / "r.onnx", ANCHORS.T[None].copy(), input_shape=[1, 3, 32])
        with pytest.raises(ModelInputError, match=r"\[1, 3, H, W\].*got \[1, 3, 32\]"):
            Detector(path)

    def test_wrong_channel_count(self, tmp_path: Path) -> None:
        path = save_model(tmp_path / "c.onnx", ANCHORS.T[None].copy(), input_shape=[1, 1, 32, 32])
        with pytest.raises(ModelInputError, match=r"got \[1, 1, 32, 32\]"):
            Detector(path)

    @pytest.mark.parametrize(
        "output",
        [
            np.zeros((1, 6), np.float32),  # rank 2
            np.zeros((1, 4, 4), np.float32),  # boxes but no class
            np.zeros((2, 6, 10), np.float32),  # batch of two
        ],
    )
    def test_wrong_output_shape(self, tmp_path: Path, output: npt.NDArray[np.float32]) -> None:
        path = save_model(tmp_path / "o.onnx", output)
        with pytest.raises(ModelOutputError, match=r"expected .*\[1, 4\+classes, N\]") as caught:
            Detector(path)
        assert str(path) in str(caught.value)

    def test_configured_names_that_do_not_fit_the_output(self, model: Path) -> None:
        with pytest.raises(ModelMetadataError, match=r"expected 2 class names .* got 3"):
            Detector(model, class_names=["a", "b", "c"])

    def test_configured_names_that_do_not_fit_a_dynamic_output(self, tmp_path: Path) -> None:
        path = save_model(
            tmp_path / "d.onnx", ANCHORS.T[None].copy(), output_shape=[1, "c", "n"]
        )
        with pytest.raises(ModelMetadataError, match=r"expected 2 class names .* got 1"):
            Detector(path, class_names=["a"])

    def test_metadata_names_that_do_not_fit_the_output(self, tmp_path: Path) -> None:
        # An nms=True export of an 80-class model: [1, 300, 6] rows of box, score, class.
        metadata = {"names": str(dict(enumerate(f"c{i}" for i in range(80))))}
        path = save_model(tmp_path / "m.onnx", np.zeros((1, 300, 6), np.float32), metadata=metadata)
        with pytest.raises(ModelOutputError, match=r"\[1, 84 \(4\+80\), N\].*got \[1, 300, 6\]"):
            Detector(path)

    def test_unparsable_names_metadata(self, tmp_path: Path) -> None:
        path = save_model(
            tmp_path / "n.onnx", ANCHORS.T[None].copy(), metadata={"names": "person, bicycle"}
        )
        with pytest.raises(ModelMetadataError, match="expected metadata names"):
            Detector(path)

    def test_nms_export_is_rejected(self, tmp_path: Path) -> None:
        metadata = {"task": "detect", "args": "{'nms': True}", "names": "{0: 'a', 1: 'b'}"}
        output = np.zeros((1, 300, 6), np.float32)
        path = save_model(tmp_path / "e2e.onnx", output, metadata=metadata)
        with pytest.raises(ModelOutputError, match="nms=False"):
            Detector(path)

    def test_other_tasks_are_rejected(self, tmp_path: Path) -> None:
        path = yolo_model(tmp_path, metadata={"task": "segment"})
        with pytest.raises(ModelOutputError, match="task 'segment'"):
            Detector(path)

    def test_every_model_error_is_an_evc_error(self) -> None:
        assert issubclass(ModelError, EvcError)
        for kind in (ModelNotFoundError, ModelLoadError, ModelInputError, ModelOutputError):
            assert issubclass(kind, ModelError)
