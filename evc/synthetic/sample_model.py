"""Where the sample detector trained on the synthetic scene lives.

In a source checkout it is ``samples/models/shapes-v1.onnx``; an installed wheel carries the same
file as ``evc/_models/shapes-v1.onnx``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from evc.errors import ModelNotFoundError

SAMPLE_MODEL_FILE = "shapes-v1.onnx"


def sample_model_path() -> Path:
    """Return the path of the committed sample model.

    Raises:
        ModelNotFoundError: neither the wheel's copy nor the checkout's file exists.
    """
    packaged = Path(str(resources.files("evc"))) / "_models" / SAMPLE_MODEL_FILE
    checkout = Path(__file__).resolve().parents[2] / "samples" / "models" / SAMPLE_MODEL_FILE
    for candidate in (packaged, checkout):
        if candidate.is_file():
            return candidate
    raise ModelNotFoundError(
        f"sample model {SAMPLE_MODEL_FILE} not found in {packaged.parent} or {checkout.parent}; "
        "train it with `python samples/train_sample_model.py`"
    )


def sample_model_copy(target: Path, *, version: str) -> Path:
    """Write the sample model to ``target`` with ``version`` in its metadata and return ``target``.

    The copy has other bytes (another SHA-256) and the same behaviour: a second model version to
    try model delivery, signing and rollouts with.
    """
    import onnx  # noqa: PLC0415 -- only this helper needs the protobuf model

    model = onnx.load(str(sample_model_path()))
    for prop in model.metadata_props:
        if prop.key == "version":
            prop.value = version
            break
    else:
        model.metadata_props.add(key="version", value=version)
    onnx.save(model, str(target))
    return target
