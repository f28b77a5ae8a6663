"""docs/BRING_YOUR_OWN_MODEL.md stays true to the detector it documents."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import evc.errors
from evc.errors import ModelError
from evc.inference import Detector

DOC = Path(__file__).resolve().parents[3] / "docs" / "BRING_YOUR_OWN_MODEL.md"


def test_every_model_error_is_explained() -> None:
    text = DOC.read_text(encoding="utf-8")
    errors = [
        name
        for name, kind in vars(evc.errors).items()
        if inspect.isclass(kind) and issubclass(kind, ModelError) and kind is not ModelError
    ]
    assert len(errors) > 1
    missing = [name for name in errors if f"`{name}`" not in text]
    assert not missing, f"BRING_YOUR_OWN_MODEL.md does not explain {missing}"


def test_every_detector_setting_is_documented() -> None:
    text = DOC.read_text(encoding="utf-8")
    settings = [p for p in inspect.signature(Detector).parameters if p != "model_path"]
    missing = [name for name in settings if not re.search(rf"\b{name}\b", text)]
    assert not missing, f"BRING_YOUR_OWN_MODEL.md does not mention {missing}"
