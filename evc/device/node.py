"""The device side of EVC: publish detections and heartbeats to the site's fog broker.

Every record first goes into a small local SQLite buffer (an :class:`~evc.outbox.Outbox`), then
a forwarder publishes it at QoS 1 and deletes it on PUBACK. While the fog broker is unreachable
records wait in the buffer, and they drain in order when it is back: a camera loop never blocks
on the network and never loses what it published, within the buffer's byte cap.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import paho.mqtt.client as mqtt

from evc.config import SamplingConfig
from evc.device.commands import DeviceCommands, DeviceSettings
from evc.device.health import InferenceHealth
from evc.device.model_slot import ModelSlot
from evc.device.reduction import ChangeFilter, PublishMode
from evc.device.sampling import HardExampleSampler, Predictions, Truth
from evc.device.updates import ModelUpdater
from evc.errors import DeviceNotStartedError, PayloadTooLargeError
from evc.identity import SequenceCounter, next_boot_epoch
from evc.models.signing import TrustedKeys
from evc.mqtt import BrokerAddress, OneToOnePacker, OutboxForwarder, Will
from evc.outbox import NewRecord, Outbox, Priority, now_ms
from evc.wire import (
    ALL_DEVICES,
    Channel,
    DeviceTopic,
    IdempotencyKey,
    Kind,
    encode_detections,
    encode_map,
)
from evc.wire.codec import DEFAULT_MAX_PAYLOAD_BYTES
from evc.wire.samples import Sample, Scalar, encode_sample

log = logging.getLogger(__name__)

HeartbeatFields = Mapping[str, int | float | str | bool | None]


class DetectorOutput(Predictions, Protocol):
    """What :meth:`Device.publish_frame` needs from a detector (``evc.inference.Detections``):
    the predictions a sampler looks at, and how long each stage took."""

    @property
    def preprocess_ms(self) -> float: ...
    @property
    def inference_ms(self) -> float: ...
    @property
    def postprocess_ms(self) -> float: ...


class Device:
    """A device node's link to its fog broker, for plain synchronous code.

    Args:
        device_id: unique within the site; the origin of every record.
        site: the site whose fog broker this device talks to.
        broker: the fog broker, as a URL or address.
        state_dir: where the boot epoch and the offline buffer live.
        buffer_max_bytes: cap on the offline buffer; past it the oldest records are dropped
            (lowest priority first) and counted.
        heartbeat_interval_s: seconds between heartbeats; 0 disables them.
        model_version: the model version stamped on frames that do not name one.
        heartbeat_fields: called for extra heartbeat fields (latency, fps, ...).
        max_record_bytes: larger records are refused with :class:`PayloadTooLargeError`; keep
            it at or below the gateway's ``ingest.max_payload_bytes`` and the broker's
            ``max_packet_size``, or one oversized record would block the ones behind it.
        change_filter: decides which frames :meth:`publish_frame` publishes; the default
            publishes every frame.
        sampler: picks the hard examples among the frames given to :meth:`publish_frame` with
            their image, and uploads them as SAMPLE records within its budget.

    Example::

        with Device(device_id="cam-01", site="depot-3", broker="mqtt://fog:1883") as device:
            for frame in camera:
                device.publish_detections(class_ids=c, scores=s, boxes=b, width=640, height=480)
    """

    def __init__(
        self,
        *,
        device_id: str,
        site: str,
        broker: str | BrokerAddress = "mqtt://127.0.0.1:1883",
        state_dir: str | Path = "var/device",
        buffer_max_bytes: int = 64 * 1024 * 1024,
        heartbeat_interval_s: float = 10.0,
        model_version: str = "unknown",
        heartbeat_fields: Callable[[], HeartbeatFields] | None = None,
        max_record_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        change_filter: ChangeFilter | None = None,
        sampler: HardExampleSampler | None = None,
    ) -> None:
        self.device_id = device_id
        self.site = site
        self.model_version = model_version
        self.heartbeat_interval_s = heartbeat_interval_s
        self.max_record_bytes = max_record_bytes
        self.change_filter = change_filter or ChangeFilter(mode=PublishMode.EVERY_FRAME)
        self.health = InferenceHealth()
        self.sampler = sampler
        self.samples_sent = 0
        self.address = (
            broker if isinstance(broker, BrokerAddress) else BrokerAddress.from_url(broker)
        )
        self.epoch = next_boot_epoch(state_dir, device_id)
        self.published = 0
        self._started_at = time.monotonic()
        self._seq = SequenceCounter()
        self._heartbeat_fields = heartbeat_fields
        self._topics = {ch: str(DeviceTopic(site, device_id, ch)) for ch in Channel}
        self._stop = threading.Event()
        self._birth_seq = 0
        self.buffer = Outbox(
            Path(state_dir) / f"{device_id}.buffer.db", max_bytes=buffer_max_bytes
        )
        self.forwarder = OutboxForwarder(
            outbox=self.buffer,
            client_id=f"evc-dev-{site}-{device_id}",
            address=self.address,
            packer=OneToOnePacker(),
            max_inflight=100,
            peek_records=100,
            will=self._will(),
            on_connect=self._publish_birth,
            on_disconnect=self._renew_will,
        )
        self._heartbeat = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
        self._state_dir = Path(state_dir)
        self.models: ModelUpdater | None = None
        self.commands: DeviceCommands | None = None
        self._started = False

    # -- what the cloud may change ---------------------------------------------------------------

    def follow_models(
        self, slot: ModelSlot, *, trusted: TrustedKeys, group: str = ALL_DEVICES
    ) -> ModelUpdater:
        """Keep ``slot`` on the model the site wants: signed manifests through the fog, verified
        here, swapped between frames by the slot. Call before :meth:`start`. Heartbeats then
        report the active model, its state, the group and refused updates."""
        self.models = ModelUpdater(
            site=self.site, device_id=self.device_id, group=group, address=self.address,
            slot=slot, trusted=trusted, folder=self._state_dir / f"{self.device_id}.downloads",
        )
        return self.models

    def accept_settings(self) -> DeviceCommands:
        """Take settings the cloud pushes (frame policy, heartbeat interval, sampling) through
        the gateway; the last applied ones are restored at once. Call before :meth:`start`."""
        self.commands = DeviceCommands(
            site=self.site, device_id=self.device_id, address=self.address,
            state_dir=self._state_dir, apply=self.apply_settings,
        )
        return self.commands

    def apply_settings(self, settings: DeviceSettings) -> None:
        """Make ``settings`` the running ones; sections left out stay as they are.

        Each is swapped in whole, so the camera loop sees the old or the new one, never half.
        """
        if settings.publish is not None:
            policy = settings.publish
            replacement = ChangeFilter(
                mode=policy.mode, iou_threshold=policy.iou_threshold,
                keyframe_interval_s=policy.keyframe_interval_s,
            )
            replacement.counts = self.change_filter.counts  # heartbeat counters never go back
            self.change_filter = replacement
        if settings.heartbeat_interval_s is not None:
            self.heartbeat_interval_s = settings.heartbeat_interval_s  # read at each beat
        if settings.sampling is not None:
            self._replace_sampler(settings.sampling)

    def _replace_sampler(self, config: SamplingConfig) -> None:
        old = self.sampler
        new = HardExampleSampler(config) if config.enabled else None
        if old is not None and new is not None:
            new.sampled, new.skipped = old.sampled, old.skipped  # counters never go back
        self.sampler = new

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Device:
        """Connect in the background; publishing works at once (into the buffer)."""
        self._started = True
        self.forwarder.start()
        if self.heartbeat_interval_s > 0:
            self._heartbeat.start()
        if self.models is not None:
            self.models.start()
        if self.commands is not None:
            self.commands.start()
        return self

    def close(self, *, drain_timeout_s: float = 5.0) -> None:
        """Flush the buffer (up to ``drain_timeout_s``), publish death, disconnect.

        A device that was never started only closes its buffer.
        """
        if not self._started:
            self.buffer.close()
            return
        self._stop.set()
        if self._heartbeat.is_alive():
            self._heartbeat.join(timeout=2)
        if self.commands is not None:
            self.commands.stop()
        if self.models is not None:
            self.models.stop()
        self.forwarder.stop(
            drain_timeout_s=drain_timeout_s,
            goodbye=(self._topics[Channel.STATE], self._state("offline")),
        )
        self.buffer.close()

    def __enter__(self) -> Device:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        """True while connected to the fog broker."""
        return self.forwarder.connected.is_set()

    @property
    def buffered(self) -> int:
        """Records not yet acknowledged by the fog broker."""
        return len(self.buffer)

    def wait_until_sent(self, timeout_s: float = 10.0) -> bool:
        """Block until every buffered record is acknowledged; return False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self.buffered:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    # -- publishing ----------------------------------------------------------------------------

    def publish_detections(
        self,
        *,
        class_ids: npt.ArrayLike,
        scores: npt.ArrayLike,
        boxes: npt.ArrayLike,
        width: int,
        height: int,
        model_version: str | None = None,
        ts_ms: int | None = None,
    ) -> IdempotencyKey:
        """Publish one frame's detections (boxes as x1, y1, x2, y2 pixels); return its key."""
        seq = self._seq.next()
        payload = encode_detections(
            origin=self.device_id, epoch=self.epoch, seq=seq,
            ts_ms=now_ms() if ts_ms is None else ts_ms,
            model_version=model_version or self.model_version, width=width, height=height,
            class_ids=class_ids, scores=scores, boxes=boxes,
        )
        self._enqueue(Channel.DETECTIONS, payload, Priority.DETECTION)
        return IdempotencyKey(self.device_id, self.epoch, seq)

    def publish_frame(
        self,
        detections: DetectorOutput,
        *,
        model_version: str | None = None,
        image: npt.NDArray[np.uint8] | None = None,
        truth: Truth | None = None,
        meta: Mapping[str, Scalar] | None = None,
    ) -> IdempotencyKey | None:
        """Publish a detector's output for one frame, unless the change filter suppresses it.

        Also records the frame's inference latency for heartbeats. With a ``sampler`` and the
        frame's ``image``, the frame is offered to the sampler too (even when the change
        filter suppresses its detections: an unchanged scene can still be a hard one), and a
        hard example within the budget is published as a SAMPLE record. A sample too large to
        publish is counted by the sampler as ``too_large``, not raised: the camera loop goes on.

        Args:
            detections: the detector's output for the frame.
            model_version: the model that produced it; defaults to the device's.
            image: the frame the model saw, for hard-example sampling.
            truth: the frame's ground truth (class ids, boxes), when known (synthetic scenes).
            meta: scalars stored with a sample (e.g. where ``truth`` came from).

        Returns:
            The detections record's key, or ``None`` when the frame was suppressed (counted in
            ``change_filter.counts``).
        """
        self.health.record(
            detections.preprocess_ms + detections.inference_ms + detections.postprocess_ms
        )
        now_s = time.monotonic()
        key = None
        if self.change_filter.should_publish(detections.class_ids, detections.boxes, now_s=now_s):
            key = self.publish_detections(
                class_ids=detections.class_ids, scores=detections.scores,
                boxes=detections.boxes, width=detections.width, height=detections.height,
                model_version=model_version,
            )
        sampler = self.sampler  # once: pushed settings may swap it from another thread
        if sampler is not None and image is not None:
            self._offer(
                sampler, detections, image, now_s=now_s,
                model_version=model_version, truth=truth, meta=meta,
            )
        return key

    def publish_sample(self, sample: Sample, *, ts_ms: int | None = None) -> IdempotencyKey:
        """Publish one hard example at the lowest priority; return its key.

        Raises:
            PayloadTooLargeError: the encoded sample exceeds ``max_record_bytes`` (send crops,
                or a smaller frame).
        """
        seq = self._seq.next()
        payload = encode_sample(
            origin=self.device_id, epoch=self.epoch, seq=seq,
            ts_ms=now_ms() if ts_ms is None else ts_ms, sample=sample,
        )
        self._enqueue(Channel.SAMPLE, payload, Priority.SAMPLE)
        self.samples_sent += 1
        return IdempotencyKey(self.device_id, self.epoch, seq)

    def _offer(
        self,
        sampler: HardExampleSampler,
        detections: DetectorOutput,
        image: npt.NDArray[np.uint8],
        *,
        now_s: float,
        model_version: str | None,
        truth: Truth | None,
        meta: Mapping[str, Scalar] | None,
    ) -> None:
        sample = sampler.consider(
            detections, image, now_s=now_s, truth=truth,
            model_version=model_version or self.model_version, meta=meta,
        )
        if sample is None:
            return
        try:
            self.publish_sample(sample)
        except PayloadTooLargeError:
            log.warning("hard example of %s too large to publish; skipped", self.device_id)
            sampler.refuse("too_large")

    def publish_heartbeat(self, fields: HeartbeatFields | None = None) -> IdempotencyKey:
        """Publish a heartbeat now, with the standard fields and any ``fields`` given."""
        seq = self._seq.next()
        sampler = self.sampler
        body: dict[str, Any] = {
            "uptime_s": round(time.monotonic() - self._started_at, 3),
            "published": self.published,
            "buffered": self.buffered,
            "model": self.model_version,
            "frames_suppressed": self.change_filter.counts.suppressed,
            "samples_sent": self.samples_sent,
            "samples_over_budget": sampler.skipped["budget"] if sampler else 0,
            **self.health.fields(),
        }
        if self.models is not None:
            body.update(self.models.heartbeat_fields())
        if self.commands is not None:
            body["settings_version"] = self.commands.active_version
        if self._heartbeat_fields:
            body.update(self._heartbeat_fields())
        body.update(fields or {})
        payload = encode_map(
            Kind.HEARTBEAT, origin=self.device_id, epoch=self.epoch, seq=seq, ts_ms=now_ms(),
            fields=body,
        )
        self._enqueue(Channel.HEARTBEAT, payload, Priority.SUMMARY)
        return IdempotencyKey(self.device_id, self.epoch, seq)

    def _enqueue(self, channel: Channel, payload: bytes, priority: Priority) -> None:
        if len(payload) > self.max_record_bytes:
            raise PayloadTooLargeError(
                f"{channel.value} record of {len(payload)} bytes exceeds {self.max_record_bytes}"
            )
        self.buffer.put([NewRecord(self._topics[channel], payload, priority)])
        self.published += 1
        self.forwarder.wake()

    # -- birth, death, heartbeat ---------------------------------------------------------------

    def _state(self, state: str, seq: int | None = None) -> bytes:
        return encode_map(
            Kind.STATE, origin=self.device_id, epoch=self.epoch,
            seq=self._seq.next() if seq is None else seq,
            ts_ms=now_ms(), fields={"state": state, "model": self.model_version},
        )

    def _will(self) -> Will:
        # The will is fixed when the connection is made, before the birth is published; reserve
        # the birth's sequence number first so that the death of a connection always sorts
        # after its birth.
        self._birth_seq = self._seq.next()
        return Will(self._topics[Channel.STATE], self._state("offline"))

    def _publish_birth(self, client: mqtt.Client) -> None:
        birth = self._state("online", seq=self._birth_seq)
        client.publish(self._topics[Channel.STATE], birth, qos=1, retain=True)

    def _renew_will(self, client: mqtt.Client) -> None:
        # Each connection's death must carry a fresh sequence number, or the cloud would drop
        # the second death of a boot as a duplicate of the first; paho sends the will it holds
        # when it reconnects.
        will = self._will()
        client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_interval_s):
            try:
                self.publish_heartbeat()
            except Exception:
                log.exception("heartbeat failed")


class AsyncDevice:
    """The same device for asyncio code: ``async with AsyncDevice(...) as device: ...``.

    Takes the settings of :class:`Device`. Publishing only commits to the local buffer (tens of
    microseconds), so it runs inline; start-up and shutdown, which wait on the network and the
    disk, run in a worker thread.
    """

    def __init__(
        self,
        *,
        device_id: str,
        site: str,
        broker: str | BrokerAddress = "mqtt://127.0.0.1:1883",
        state_dir: str | Path = "var/device",
        buffer_max_bytes: int = 64 * 1024 * 1024,
        heartbeat_interval_s: float = 10.0,
        model_version: str = "unknown",
        heartbeat_fields: Callable[[], HeartbeatFields] | None = None,
        max_record_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        change_filter: ChangeFilter | None = None,
        sampler: HardExampleSampler | None = None,
    ) -> None:
        self._make = functools.partial(
            Device, device_id=device_id, site=site, broker=broker, state_dir=state_dir,
            buffer_max_bytes=buffer_max_bytes, heartbeat_interval_s=heartbeat_interval_s,
            model_version=model_version, heartbeat_fields=heartbeat_fields,
            max_record_bytes=max_record_bytes, change_filter=change_filter, sampler=sampler,
        )
        self._device: Device | None = None

    @property
    def device(self) -> Device:
        """The synchronous device underneath."""
        if self._device is None:
            raise DeviceNotStartedError("AsyncDevice is not started; use `async with`")
        return self._device

    async def __aenter__(self) -> AsyncDevice:
        self._device = await asyncio.to_thread(lambda: self._make().start())
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await asyncio.to_thread(self.device.close)

    async def publish_detections(
        self,
        *,
        class_ids: npt.ArrayLike,
        scores: npt.ArrayLike,
        boxes: npt.ArrayLike,
        width: int,
        height: int,
        model_version: str | None = None,
        ts_ms: int | None = None,
    ) -> IdempotencyKey:
        """See :meth:`Device.publish_detections`."""
        return self.device.publish_detections(
            class_ids=class_ids, scores=scores, boxes=boxes, width=width, height=height,
            model_version=model_version, ts_ms=ts_ms,
        )

    async def publish_frame(
        self,
        detections: DetectorOutput,
        *,
        model_version: str | None = None,
        image: npt.NDArray[np.uint8] | None = None,
        truth: Truth | None = None,
        meta: Mapping[str, Scalar] | None = None,
    ) -> IdempotencyKey | None:
        """See :meth:`Device.publish_frame`."""
        return self.device.publish_frame(
            detections, model_version=model_version, image=image, truth=truth, meta=meta
        )

    async def publish_sample(
        self, sample: Sample, *, ts_ms: int | None = None
    ) -> IdempotencyKey:
        """See :meth:`Device.publish_sample`."""
        return self.device.publish_sample(sample, ts_ms=ts_ms)

    async def publish_heartbeat(self, fields: HeartbeatFields | None = None) -> IdempotencyKey:
        """See :meth:`Device.publish_heartbeat`."""
        return self.device.publish_heartbeat(fields)

    async def wait_until_sent(self, timeout_s: float = 10.0) -> bool:
        """See :meth:`Device.wait_until_sent`."""
        return await asyncio.to_thread(self.device.wait_until_sent, timeout_s)
