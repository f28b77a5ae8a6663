"""The on-device detector: an ONNX Runtime session around a YOLOv8 / YOLO11 detection model.

Any Ultralytics detection model exported with ``format=onnx nms=False`` runs unchanged: the input
size, class names and layout are read from the model and its metadata, and everything that does
not fit is rejected at construction with a typed :class:`~evc.errors.ModelError` that says what was
expected. A :class:`Detector` is safe to call from several threads (ONNX Runtime sessions are).
"""

from __future__ import annotations

import ast
import hashlib
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from evc.errors import (
    ConfigError,
    InferenceError,
    ModelError,
    ModelInputError,
    ModelLoadError,
    ModelMetadataError,
    ModelNotFoundError,
    ModelOutputError,
)
from evc.inference.postprocess import OutputLayout, postprocess, resolve_layout
from evc.inference.preprocess import Interpolation, letterbox, unletterbox_boxes
from evc.wire.codec import MAX_DETECTIONS_PER_FRAME

DEFAULT_IMGSZ = 640
_VERSION_DIGITS = 12
_INPUT_TYPES: Mapping[str, type[np.floating]] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
}

ClassNames = Sequence[str] | Mapping[int, str]
"""Class names as a list indexed by class id, or a mapping ``{0: "person", ...}``."""


@dataclass(frozen=True, slots=True)
class Detections:
    """The detections of one frame, as columns ready for :func:`evc.wire.encode_detections`.

    Rows are sorted by score, highest first. Boxes are ``x1, y1, x2, y2`` in pixels of the
    original ``width`` x ``height`` frame.
    """

    class_ids: npt.NDArray[np.uint16]
    """Class id of each detection."""
    scores: npt.NDArray[np.float32]
    """Confidence of each detection, ``0..1``."""
    boxes: npt.NDArray[np.float32]
    """``N x 4`` boxes, ``x1, y1, x2, y2`` in frame pixels."""
    width: int
    """Width of the frame, in pixels."""
    height: int
    """Height of the frame, in pixels."""
    preprocess_ms: float = 0.0
    """Time spent letterboxing the frame, in milliseconds."""
    inference_ms: float = 0.0
    """Time spent in ONNX Runtime, in milliseconds."""
    postprocess_ms: float = 0.0
    """Time spent decoding, suppressing and mapping boxes back, in milliseconds."""

    def __len__(self) -> int:
        return len(self.scores)


class Detector:
    """Runs a YOLO-family ONNX detection model on RGB frames.

    Example::

        detector = Detector("yolo11n.onnx", conf_threshold=0.3)
        found = detector(frame)
        payload = encode_detections(
            origin=..., epoch=..., seq=..., ts_ms=..., model_version=detector.model_version,
            width=found.width, height=found.height,
            class_ids=found.class_ids, scores=found.scores, boxes=found.boxes,
        )
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        conf_threshold: float = 0.25,
        iou_threshold: float = 0.45,
        max_detections: int = 300,
        class_names: ClassNames | None = None,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        intra_op_threads: int | None = None,
        warmup: bool = True,
        model_version: str | None = None,
        interpolation: Interpolation = "nearest",
    ) -> None:
        """Load and check a model, then run it once so the first frame is not slow.

        Args:
            model_path: The ``.onnx`` file.
            conf_threshold: Detections must score strictly above this (``0..1``).
            iou_threshold: Same-class boxes overlapping a better one by more IoU are dropped.
            max_detections: At most this many detections per frame, best first.
            class_names: Names by class id; overrides the model's ``names`` metadata.
            providers: ONNX Runtime execution providers, in order of preference.
            intra_op_threads: Threads ONNX Runtime uses within an operator (default: its own).
            warmup: Run one blank frame at construction.
            model_version: Overrides the version read from metadata or hashed from the file.
            interpolation: Letterbox resampling, ``nearest`` (fast) or ``bilinear``.

        Raises:
            ConfigError: a threshold, limit, thread count or interpolation is out of range.
            ModelNotFoundError: ``model_path`` is not a file.
            ModelLoadError: the file is not an ONNX model, or a provider is not available.
            ModelInputError: the input is not one ``[1, 3, H, W]`` float tensor.
            ModelOutputError: the output is not one YOLO detection tensor.
            ModelMetadataError: metadata or ``class_names`` disagree with the model.
        """
        _check_settings(conf_threshold, iou_threshold, max_detections, intra_op_threads)
        if interpolation not in ("nearest", "bilinear"):
            raise ConfigError(f"interpolation must be nearest or bilinear, got {interpolation!r}")
        self._path = Path(model_path)
        self._conf_threshold = conf_threshold
        self._iou_threshold = iou_threshold
        self._max_detections = max_detections
        self._interpolation: Interpolation = interpolation
        self._local = threading.local()
        if isinstance(providers, str):
            providers = (providers,)
        self._session = _open_session(self._path, providers, intra_op_threads)
        self._metadata: dict[str, str] = dict(self._session.get_modelmeta().custom_metadata_map)
        self._input_name, self._input_size, self._input_dtype = self._read_input()
        # Names in the metadata describe the model itself, so they help read its output shape;
        # configured names are the user's claim and are checked against that shape afterwards.
        from_metadata = self._metadata_names()
        self._output_name, self._layout = self._read_output(from_metadata)
        if class_names is not None:
            self._class_names = self._check_names(_parse_names(class_names, "class_names"))
        else:
            self._class_names = self._check_names(from_metadata)
        self._model_version = model_version or _version_of(self._metadata, self._path)
        if warmup:
            self._infer(self._blank())

    @property
    def conf_threshold(self) -> float:
        """Detections must score strictly above this."""
        return self._conf_threshold

    @property
    def iou_threshold(self) -> float:
        """Same-class boxes overlapping a better one by more than this IoU are dropped."""
        return self._iou_threshold

    @property
    def max_detections(self) -> int:
        """At most this many detections are returned per frame."""
        return self._max_detections

    @property
    def path(self) -> Path:
        """The model file."""
        return self._path

    @property
    def model_version(self) -> str:
        """Metadata ``evc_model_version``, a non-Ultralytics ``version``, else a SHA-256 prefix."""
        return self._model_version

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names indexed by class id."""
        return self._class_names

    @property
    def num_classes(self) -> int:
        """Number of classes the model scores."""
        return self._layout.num_classes

    @property
    def input_size(self) -> tuple[int, int]:
        """The model input ``(height, width)`` frames are letterboxed to."""
        return self._input_size

    @property
    def providers(self) -> tuple[str, ...]:
        """Execution providers the session actually uses, in order of preference."""
        return tuple(self._session.get_providers())

    @property
    def metadata(self) -> Mapping[str, str]:
        """The model's custom metadata, as exported."""
        return dict(self._metadata)

    def __call__(self, frame: npt.NDArray[np.uint8], *, bgr: bool = False) -> Detections:
        """Detect objects in one frame.

        Args:
            frame: An ``H x W x 3`` uint8 image, RGB unless ``bgr`` is set.
            bgr: The frame's channels are in BGR order (as OpenCV delivers them).

        Returns:
            The detections, boxes in frame pixels.

        Raises:
            FrameError: ``frame`` is not an ``H x W x 3`` uint8 array.
            InferenceError: ONNX Runtime failed to run the model.
            ModelOutputError: the model produced an output of a different shape than at load.
        """
        start = time.perf_counter()
        tensor, placement = letterbox(
            frame,
            self._input_size,
            bgr=bgr,
            interpolation=self._interpolation,
            out=self._input_buffer(),
        )
        prepared = time.perf_counter()
        raw = self._infer(tensor)
        inferred = time.perf_counter()
        class_ids, scores, boxes = postprocess(
            raw,
            self._layout,
            conf_threshold=self._conf_threshold,
            iou_threshold=self._iou_threshold,
            max_detections=self._max_detections,
        )
        boxes = unletterbox_boxes(boxes, placement)
        done = time.perf_counter()
        return Detections(
            class_ids=class_ids,
            scores=scores,
            boxes=boxes,
            width=placement.width,
            height=placement.height,
            preprocess_ms=(prepared - start) * 1e3,
            inference_ms=(inferred - prepared) * 1e3,
            postprocess_ms=(done - inferred) * 1e3,
        )

    def __repr__(self) -> str:
        return (
            f"Detector({str(self._path)!r}, version={self._model_version!r}, "
            f"input={self._input_size}, classes={self.num_classes})"
        )

    def _infer(self, tensor: npt.NDArray[np.floating]) -> npt.NDArray[np.floating]:
        """Run the session on one input tensor and return the detection output."""
        try:
            outputs = self._session.run([self._output_name], {self._input_name: tensor})
        # onnxruntime's exceptions derive directly from Exception; there is no narrower base.
        except Exception as exc:
            raise InferenceError(
                f"ONNX Runtime failed to run {self._path}: {exc}", path=str(self._path)
            ) from exc
        output: npt.NDArray[np.floating] = np.asarray(outputs[0])
        return output

    def _input_buffer(self) -> npt.NDArray[np.floating]:
        """This thread's input tensor, reused from frame to frame.

        A fresh multi-megabyte tensor per frame costs more in page faults than the resize
        itself; ONNX Runtime does not keep the input once ``run`` returns.
        """
        buffer: npt.NDArray[np.floating] | None = getattr(self._local, "input", None)
        if buffer is None:
            buffer = self._local.input = np.empty((1, 3, *self._input_size), self._input_dtype)
        return buffer

    def _blank(self) -> npt.NDArray[np.floating]:
        """A padding-grey input tensor, for warm-up and for probing dynamic output shapes."""
        shape = (1, 3, *self._input_size)
        return np.full(shape, 114.0 / 255.0, dtype=self._input_dtype)

    def _read_input(self) -> tuple[str, tuple[int, int], type[np.floating]]:
        """Check the model input and work out the size frames are letterboxed to."""
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise self._error(ModelInputError, f"expected 1 input, found {len(inputs)}")
        spec = inputs[0]
        # Dynamic axes come back as names (or None); they fit whatever we feed them.
        dims = [d if isinstance(d, int) and d > 0 else None for d in spec.shape]
        if len(dims) != 4 or dims[0] not in (1, None) or dims[1] not in (3, None):
            raise self._error(
                ModelInputError,
                f"expected input {spec.name!r} of shape [1, 3, H, W] (NCHW, RGB), "
                f"got {list(spec.shape)}",
            )
        if spec.type not in _INPUT_TYPES:
            raise self._error(
                ModelInputError,
                f"expected input {spec.name!r} of type tensor(float) or tensor(float16), "
                f"got {spec.type}",
            )
        default_h, default_w = self._metadata_imgsz()
        height, width = dims[2] or default_h, dims[3] or default_w
        return spec.name, (height, width), _INPUT_TYPES[spec.type]

    def _read_output(self, names: tuple[str, ...] | None) -> tuple[str, OutputLayout]:
        """Check the model output and find where classes and anchors sit in it."""
        self._check_export_metadata()
        outputs = self._session.get_outputs()
        if len(outputs) != 1:
            found = ", ".join(f"{o.name} {list(o.shape)}" for o in outputs)
            raise self._error(
                ModelOutputError,
                f"expected 1 output of shape [1, 4+classes, N] (a detection model), "
                f"found {len(outputs)}: {found}",
            )
        spec = outputs[0]
        num_classes = len(names) if names is not None else None
        try:
            layout = resolve_layout(list(spec.shape), num_classes)
            if layout is None:
                # Both output axes are dynamic: only running the model tells them apart.
                probed = self._infer(self._blank()).shape
                layout = resolve_layout(list(probed), num_classes)
                if layout is not None:
                    layout.check(probed)
        except ModelOutputError as exc:
            raise self._error(ModelOutputError, f"output {spec.name!r}: {exc}") from exc
        if layout is None:
            raise self._error(ModelOutputError, f"output {spec.name!r} has no usable shape")
        return spec.name, layout

    def _check_export_metadata(self) -> None:
        """Reject Ultralytics exports of other tasks or with NMS built into the graph."""
        task = self._metadata.get("task")
        if task is not None and task != "detect":
            raise self._error(
                ModelOutputError, f"expected a detection model (task 'detect'), got task {task!r}"
            )
        args = _literal(self._metadata.get("args"))
        if isinstance(args, dict) and args.get("nms"):
            raise self._error(
                ModelOutputError,
                "expected a model exported with nms=False (raw [1, 4+classes, N] output), "
                "but it was exported with nms=True",
            )

    def _metadata_imgsz(self) -> tuple[int, int]:
        """Input size for dynamic axes: the ``imgsz`` metadata, else 640 x 640."""
        value = _literal(self._metadata.get("imgsz"))
        if isinstance(value, int) and value > 0:
            return value, value
        if (
            isinstance(value, (list, tuple))
            and len(value) == 2
            and all(isinstance(v, int) and v > 0 for v in value)
        ):
            return int(value[0]), int(value[1])
        if value is not None:
            raise self._error(
                ModelMetadataError, f"expected metadata imgsz like '[640, 640]', got {value!r}"
            )
        return DEFAULT_IMGSZ, DEFAULT_IMGSZ

    def _metadata_names(self) -> tuple[str, ...] | None:
        """Class names from the Ultralytics ``names`` metadata, if present."""
        text = self._metadata.get("names")
        if text is None:
            return None
        value = _literal(text)
        if not isinstance(value, (dict, list, tuple)):
            raise self._error(
                ModelMetadataError,
                f"expected metadata names like \"{{0: 'person', 1: 'bicycle'}}\", got {text!r}",
            )
        try:
            return _parse_names(value, "metadata names")
        except ModelMetadataError as exc:
            raise self._error(ModelMetadataError, str(exc)) from exc

    def _check_names(self, names: tuple[str, ...] | None) -> tuple[str, ...]:
        """Make sure there is exactly one name per class, inventing ``class<N>`` if none given."""
        count = self._layout.num_classes
        if names is None:
            return tuple(f"class{i}" for i in range(count))
        if len(names) != count:
            raise self._error(
                ModelMetadataError,
                f"expected {count} class names (the model scores {count} classes), "
                f"got {len(names)}",
            )
        return names

    def _error(self, kind: type[ModelError], message: str) -> ModelError:
        """Build a model error that names the file."""
        return kind(f"{self._path}: {message}", path=str(self._path))


def _check_settings(
    conf_threshold: float, iou_threshold: float, max_detections: int, threads: int | None
) -> None:
    """Reject detector settings that cannot work."""
    if not 0.0 <= conf_threshold <= 1.0:
        raise ConfigError(f"conf_threshold must be within 0..1, got {conf_threshold}")
    if not 0.0 <= iou_threshold <= 1.0:
        raise ConfigError(f"iou_threshold must be within 0..1, got {iou_threshold}")
    if not 1 <= max_detections <= MAX_DETECTIONS_PER_FRAME:
        raise ConfigError(
            f"max_detections must be within 1..{MAX_DETECTIONS_PER_FRAME} (the wire limit), "
            f"got {max_detections}"
        )
    if threads is not None and threads < 1:
        raise ConfigError(f"intra_op_threads must be at least 1, got {threads}")


def _open_session(
    path: Path, providers: Sequence[str], threads: int | None
) -> ort.InferenceSession:
    """Create the ONNX Runtime session, turning every failure into a typed error."""
    if not path.is_file():
        raise ModelNotFoundError(
            f"{path}: model file not found (expected an ONNX file)", path=str(path)
        )
    available = ort.get_available_providers()
    missing = [p for p in providers if p not in available]
    if not providers or missing:
        raise ModelLoadError(
            f"{path}: execution providers {missing or list(providers)} are not available; "
            f"this onnxruntime offers {available}",
            path=str(path),
        )
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: ORT warnings are not actionable on a device
    if threads is not None:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
    # onnxruntime's exceptions derive directly from Exception; there is no narrower base.
    except Exception as exc:
        raise ModelLoadError(
            f"{path}: expected an ONNX model that ONNX Runtime can load, but loading failed: {exc}",
            path=str(path),
        ) from exc


def _parse_names(value: ClassNames | Any, source: str) -> tuple[str, ...]:
    """Turn a list or ``{id: name}`` mapping into names indexed by class id."""
    if isinstance(value, Mapping):
        ids = sorted(value)
        if ids != list(range(len(ids))):
            raise ModelMetadataError(f"{source}: expected class ids 0..{len(ids) - 1}, got {ids}")
        names = [value[i] for i in ids]
    elif isinstance(value, Sequence) and not isinstance(value, str):
        names = list(value)
    else:
        raise ModelMetadataError(f"{source}: expected a list or mapping of names, got {value!r}")
    if not names or not all(isinstance(n, str) for n in names):
        raise ModelMetadataError(f"{source}: expected a non-empty list of strings, got {names!r}")
    return tuple(names)


def _literal(text: str | None) -> Any:
    """Parse a metadata value Ultralytics wrote as ``str(python_value)``; unparsable text as is."""
    if text is None:
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def _version_of(metadata: Mapping[str, str], path: Path) -> str:
    """Pick the model version: explicit EVC metadata, a model's own version, else a file hash.

    Ultralytics writes its *package* version under ``version``, which would give every model
    exported by the same release the same version, so that key is ignored for its exports.
    """
    if version := metadata.get("evc_model_version"):
        return version
    from_ultralytics = metadata.get("author", "").startswith("Ultralytics")
    if (version := metadata.get("version")) and not from_ultralytics:
        return version
    digest = hashlib.sha256()
    with path.open("rb") as model_file:
        for chunk in iter(lambda: model_file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:_VERSION_DIGITS]
