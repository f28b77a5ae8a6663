"""The ingress targets: the gateway's ``admit()`` with a full pipeline, and the cloud's ingest.

Both keep state across inputs, as the daemons do, and check what they let through: every record
an ingress emits must be one the cloud accepts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any, cast

import paho.mqtt.client as mqtt

from evc.cloud.ingest import CloudIngest
from evc.errors import EvcError, WireError
from evc.fuzz.contract import (
    MAX_BATCH_BYTES,
    MAX_RECORD_BYTES,
    PIPELINE,
    SITE,
    InvariantError,
    reason_of,
    unpack_message,
)
from evc.gateway.intake import admit
from evc.gateway.pipeline import (
    Aggregate,
    Alerts,
    Pipeline,
    SampleSelect,
    Threshold,
    Track,
    Zones,
    validate_operators,
)
from evc.wire import GatewayTopic, validate_record


class _Listener:
    """A pipeline listener that remembers operator failures (the pipeline only logs them)."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.outcomes: Counter[str] = Counter()

    def record(self, operator: str, outcome: str, reason: str, removed: int) -> None:
        del removed  # how many detections an operator removed is not what the fuzzer checks
        self.outcomes[outcome] += 1
        if outcome == "error":
            self.errors.append(f"{operator}: {reason}")

    def record_events(self, operator: str, event_type: str, count: int) -> None:
        """Events are not what the fuzzer checks."""

    def record_alert(self, operator: str, rule: str) -> None:
        """Alerts are not what the fuzzer checks."""


class AdmitTarget:
    """The gateway's ingress ``admit()`` with a pipeline of every operator kind (and, on flag
    bit 0, a ``degrade`` aggregate); every record it returns must be one the cloud accepts."""

    RESET_EVERY = 4096  # bounds the per-device state of track, aggregate and alert

    def __init__(self) -> None:
        self.clock = 0.0
        self.listener = _Listener()
        self.calls = 0
        self._build()

    def _build(self) -> None:
        # Built by hand rather than with build_pipeline: the sample budgets get a clock that
        # ticks once per input, so that a run is the same on every machine.
        configs: list[Any] = validate_operators(PIPELINE)
        threshold, zones, track, alert, aggregate, sample = configs
        operators: list[Any] = [
            Threshold(threshold), Zones(zones), Track(track), Alerts(alert),
            Aggregate(aggregate), SampleSelect(sample, clock=lambda: self.clock),
        ]
        self.pipeline = Pipeline(operators, listener=self.listener)
        degrade: Any = validate_operators([{"type": "aggregate"}])[0]
        self.degrade = Aggregate(degrade)

    def __call__(self, data: bytes) -> str | None:
        topic, payload, degrade = unpack_message(data)
        self.calls += 1
        self.clock += 1.0
        self.listener.errors.clear()
        try:
            records, _ = admit(
                topic, payload, site=SITE, max_bytes=MAX_RECORD_BYTES, pipeline=self.pipeline,
                degrade=self.degrade if degrade else None, listener=self.listener,
            )
        except EvcError as exc:
            return reason_of(exc)
        self._check([r.payload for r in records])
        if self.calls % self.RESET_EVERY == 0:
            self.close()
        return None

    def _check(self, payloads: Sequence[bytes]) -> None:
        if self.listener.errors:
            raise InvariantError(f"pipeline operator failed: {self.listener.errors}")
        for payload in payloads:
            try:
                validate_record(payload, max_bytes=MAX_BATCH_BYTES)
            except WireError as exc:
                raise InvariantError(f"admit produced a record the cloud refuses: {exc}") from exc

    def close(self) -> None:
        """Close every open window (as a stopping gateway does), check them, start afresh."""
        self._check([*self.pipeline.flush(), *self.degrade.flush()])
        self._build()


class _Counting:
    """Stands in for the worker's metrics: remembers what ``_unpack`` counted."""

    def __init__(self) -> None:
        self.rejected: Counter[str] = Counter()
        self.batches = 0

    def labels(self, reason: str) -> SimpleNamespace:
        return SimpleNamespace(inc=lambda: self.rejected.update([reason]))

    def inc(self) -> None:
        self.batches += 1


class CloudIngestTarget:
    """The cloud's ingress, ``CloudIngest._unpack``, on random gateway topics and payloads.

    A refused message returns its reason; records refused inside an accepted batch are counted
    in ``record_rejects``. Every record it keeps must be one of the topic's site that
    ``validate_record`` accepts.
    """

    def __init__(self) -> None:
        self.record_rejects: Counter[str] = Counter()
        self.counts = _Counting()
        self.worker = cast(CloudIngest, SimpleNamespace(
            config=SimpleNamespace(ingest=SimpleNamespace(max_payload_bytes=MAX_BATCH_BYTES)),
            metrics=SimpleNamespace(rejected=self.counts, batches=self.counts),
        ))

    def __call__(self, data: bytes) -> str | None:
        topic, payload, _ = unpack_message(data)
        message = mqtt.MQTTMessage(topic=topic.encode("utf-8", "surrogatepass"))
        message.payload = payload
        self.counts.rejected.clear()
        self.counts.batches = 0
        records = CloudIngest._unpack(self.worker, message)
        if not self.counts.batches:
            if len(self.counts.rejected) != 1 or records:
                raise InvariantError(f"a refused message counted {dict(self.counts.rejected)}")
            return next(iter(self.counts.rejected))
        self.record_rejects.update(self.counts.rejected)
        site = GatewayTopic.parse(topic).site
        for record in records:
            if record.site != site:
                raise InvariantError(f"stored a record of site {record.site!r} from {topic!r}")
            try:
                validate_record(record.payload, max_bytes=MAX_BATCH_BYTES)
            except WireError as exc:
                raise InvariantError(f"stored a record it should refuse: {exc}") from exc
        return None
