"""``alert``: rules over each device's frames that raise high-priority ALERT records at once.

Two kinds of rule, each named and with its own cooldown:

* ``count_above``: a frame holds more than ``count`` detections of ``class``.
* ``dwell``: the class has been inside the device's ``zone`` continuously for longer than
  ``seconds``. Presence is judged per frame, simply: any detection of the class whose box centre
  lies in one of the device's polygons. One frame without such a detection resets the clock.
  Durations are measured on the frames' ``ts_ms`` (the device's clock), so they do not depend
  on when the gateway happens to see the frames.

A rule that fired for a device stays quiet for that device for ``cooldown_s`` (again on
``ts_ms``); devices are independent. The alerts ride on the frame (:attr:`Frame.alerts`), which
itself passes through unchanged; the intake stores them as one ALERT record under the frame's key
at ``Priority.ALERT``, so they overtake any backlog. State lives in memory: after a gateway
restart dwell clocks and cooldowns start over.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Literal

import numpy as np
import numpy.typing as npt
from pydantic import ConfigDict, Field, model_validator

from evc.config import StrictModel
from evc.gateway.pipeline.base import ClassRef, Frame, Operator, OperatorConfig, resolve_class
from evc.gateway.pipeline.zones import Polygon, inside
from evc.wire import Alert

_RULE_NAME = r"^[A-Za-z0-9_.-]{1,64}$"


class _Rule(StrictModel):
    """What every rule has: a name, a class and a cooldown."""

    # ``class`` is a Python keyword: the field is ``class_`` and YAML says ``class``.
    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True,
                              serialize_by_alias=True)

    name: str = Field(pattern=_RULE_NAME, description="The rule's name, in alerts and metrics.")
    class_: ClassRef = Field(
        alias="class", description="The class watched: an id, or a name from class_names."
    )
    cooldown_s: float = Field(
        60.0, ge=0, description="After firing for a device, stay quiet for that device this "
        "many seconds (of frame time).",
    )


class CountAboveRule(_Rule):
    """Fires when a frame holds more than ``count`` detections of the class."""

    kind: Literal["count_above"] = Field(description="Selects this rule.")
    count: int = Field(ge=0, le=4096, description="Fire above this many detections in a frame.")


class DwellRule(_Rule):
    """Fires when the class has been in the device's zone continuously for longer than
    ``seconds``."""

    kind: Literal["dwell"] = Field(description="Selects this rule.")
    zone: dict[str, list[Polygon]] = Field(
        min_length=1, description="Per device id, its zone: polygons of at least 3 [x, y] pixel "
        "points. Devices not listed are not watched.",
    )
    zone_name: str = Field(
        "", max_length=64, description="The zone's name in alerts; defaults to the rule's name."
    )
    seconds: float = Field(gt=0, description="Fire once presence has lasted longer than this.")


Rule = Annotated[CountAboveRule | DwellRule, Field(discriminator="kind")]


class AlertConfig(OperatorConfig):
    """Alert rules; the frame itself passes through unchanged."""

    type: Literal["alert"] = Field(description="Selects this operator.")
    rules: list[Rule] = Field(
        min_length=1, max_length=64, description="The rules, each count_above or dwell."
    )
    class_names: list[str] = Field(
        default_factory=list, description="Class names by id, to name classes instead of ids."
    )

    @model_validator(mode="after")
    def _check_rules(self) -> AlertConfig:
        names = [rule.name for rule in self.rules]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"rule names must be unique, repeated: {repeated}")
        for rule in self.rules:
            self.class_id(rule.class_)
        return self

    def class_id(self, ref: ClassRef) -> int:
        """The class id ``ref`` names (see :func:`resolve_class`)."""
        return resolve_class(ref, self.class_names)


class Alerts(Operator[AlertConfig]):
    """Evaluates every rule on every frame; keeps dwell clocks and cooldowns per device."""

    reason = "alert"

    def __init__(self, config: AlertConfig) -> None:
        super().__init__(config)
        self._classes = {rule.name: config.class_id(rule.class_) for rule in config.rules}
        self._zones = {
            rule.name: {
                device: [np.asarray(p, dtype=np.float64) for p in polygons]
                for device, polygons in rule.zone.items()
            }
            for rule in config.rules if isinstance(rule, DwellRule)
        }
        self._since: dict[tuple[str, str], int] = {}  # (rule, device) -> presence start, ms
        self._fired: dict[tuple[str, str], int] = {}  # (rule, device) -> last alert, ms

    def __call__(self, frame: Frame) -> Frame:
        raised = []
        for rule in self.config.rules:
            alert = self._count(rule, frame) if isinstance(rule, CountAboveRule) else (
                self._dwell(rule, frame)
            )
            if alert is not None and self._cooled(rule, frame):
                raised.append(alert)
        if not raised:
            return frame
        return replace(frame, alerts=(*frame.alerts, *raised))

    def _count(self, rule: CountAboveRule, frame: Frame) -> Alert | None:
        mask = frame.class_ids == self._classes[rule.name]
        if int(mask.sum()) <= rule.count:
            return None
        return self._alert(rule, frame, mask, 0, "")

    def _dwell(self, rule: DwellRule, frame: Frame) -> Alert | None:
        polygons = self._zones[rule.name].get(frame.origin)
        if polygons is None:
            return None
        key = (rule.name, frame.origin)
        mask = self._present(frame, self._classes[rule.name], polygons)
        if not mask.any():
            self._since.pop(key, None)  # absence resets the clock
            return None
        since = self._since.get(key)
        if since is None or frame.ts_ms < since:  # a clock that stepped back starts over
            since = self._since[key] = frame.ts_ms
        duration = frame.ts_ms - since
        if duration <= rule.seconds * 1000:
            return None
        return self._alert(rule, frame, mask, duration, rule.zone_name or rule.name)

    @staticmethod
    def _present(
        frame: Frame, class_id: int, polygons: list[npt.NDArray[np.float64]]
    ) -> npt.NDArray[np.bool_]:
        """Which detections are of ``class_id`` with their centre in one of ``polygons``."""
        mask = np.asarray(frame.class_ids == class_id, dtype=bool)
        if not mask.any():
            return mask
        centres = frame.centres()
        hit = np.zeros(len(frame), dtype=bool)
        for polygon in polygons:
            hit |= inside(centres, polygon)
        return np.asarray(mask & hit)

    def _cooled(self, rule: CountAboveRule | DwellRule, frame: Frame) -> bool:
        """Whether ``rule`` may fire for the frame's device now; if so, start its cooldown."""
        key = (rule.name, frame.origin)
        last = self._fired.get(key)
        if last is not None and 0 <= frame.ts_ms - last < rule.cooldown_s * 1000:
            return False
        self._fired[key] = frame.ts_ms
        return True

    def _alert(
        self, rule: CountAboveRule | DwellRule, frame: Frame, mask: npt.NDArray[np.bool_],
        duration_ms: int, zone: str,
    ) -> Alert:
        return Alert(
            rule=rule.name, class_id=self._classes[rule.name], count=int(mask.sum()),
            duration_ms=duration_ms, zone=zone, boxes=frame.boxes[mask],
        )
