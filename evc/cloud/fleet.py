"""The fleet view: sites -> gateways -> devices, from the record store's device and gateway views.

A device is *online* while its newest state record is a birth (or none was seen) and it was
heard from within ``stale_after_s``; *offline* once its newest state record is a death (graceful
close or Last Will); *stale* when it has been silent longer than ``stale_after_s``. Ages use the
cloud's clock against the device's ``ts_ms``, so a device whose clock is off by minutes looks
that much fresher or staler.

Gateways are known by the records they forwarded and by their own heartbeats, which travel in
their batches (outbox depth, backlog age, links); their birth and death are retained on the
cloud broker and never reach the store.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol

from evc.cloud.store import DeviceRow, GatewayRow
from evc.outbox import now_ms

DEFAULT_STALE_AFTER_S = 60.0

ONLINE, OFFLINE, STALE = "online", "offline", "stale"


class FleetSource(Protocol):
    """What :func:`fleet_status` reads (``SqliteRecordStore`` is one)."""

    def devices(self, *, site: str | None = None) -> list[DeviceRow]:
        """Every device heard from, or only ``site``'s."""
        ...

    def gateways(self, *, site: str | None = None) -> list[GatewayRow]:
        """Every gateway whose records arrived, or only ``site``'s."""
        ...


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    """One device, as its newest heartbeat and state record describe it.

    Attributes:
        state: ``online``, ``offline`` (a death was its last word) or ``stale`` (silent).
        last_seen_age_s: seconds since its newest heartbeat or state record.
        heartbeat_age_s: seconds since its newest heartbeat, None if it never sent one.
        model: the model version it reported last (heartbeat, else birth).
    """

    device: str
    gateway: str
    state: str
    last_seen_age_s: float
    heartbeat_age_s: float | None
    model: str | None
    model_state: str | None
    group: str | None
    inference_ms_p50: float | None
    inference_ms_p99: float | None
    fps: float | None
    buffered: int | None

    @property
    def online(self) -> bool:
        return self.state == ONLINE


@dataclass(frozen=True, slots=True)
class GatewayStatus:
    """One gateway and the devices whose newest record came through it.

    Attributes:
        last_batch_age_s: seconds since the cloud last stored records it forwarded.
        outbox_records: its outbox depth at its last heartbeat; None before the first.
        backlog_age_s: the age of its oldest outbox record at its last heartbeat.
    """

    gateway: str
    last_batch_age_s: float | None
    devices: tuple[DeviceStatus, ...]
    outbox_records: int | None = None
    backlog_age_s: float | None = None

    @property
    def online_devices(self) -> int:
        return sum(device.online for device in self.devices)


@dataclass(frozen=True, slots=True)
class SiteStatus:
    """One site's gateways."""

    site: str
    gateways: tuple[GatewayStatus, ...]


@dataclass(frozen=True, slots=True)
class FleetStatus:
    """The whole fleet at ``now_ms`` (cloud clock)."""

    now_ms: int
    stale_after_s: float
    sites: tuple[SiteStatus, ...]

    def devices(self) -> list[DeviceStatus]:
        """Every device of every site."""
        return [d for site in self.sites for gateway in site.gateways for d in gateway.devices]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON: the dataclasses, plus each gateway's online count."""
        data = asdict(self)
        for site, site_data in zip(self.sites, data["sites"], strict=True):
            for gateway, gateway_data in zip(site.gateways, site_data["gateways"], strict=True):
                gateway_data["online_devices"] = gateway.online_devices
        return data


def fleet_status(
    store: FleetSource, *, site: str | None = None,
    stale_after_s: float = DEFAULT_STALE_AFTER_S, now: int | None = None,
) -> FleetStatus:
    """The fleet as the store last heard of it.

    Args:
        store: the record store (its ``devices`` and ``gateways`` views).
        site: only this site.
        stale_after_s: a device silent for longer is ``stale``, not online.
        now: the time to judge ages at, Unix milliseconds (default: the clock).

    Raises:
        StoreError: the store cannot be read.
    """
    now = now_ms() if now is None else now
    by_gateway: dict[tuple[str, str], list[DeviceStatus]] = {}
    for row in store.devices(site=site):
        status = _device_status(row, now, stale_after_s)
        by_gateway.setdefault((row.site, row.gateway), []).append(status)
    known = {(g.site, g.gateway): g for g in store.gateways(site=site)}
    sites: dict[str, list[GatewayStatus]] = {}
    for key in sorted(by_gateway.keys() | known.keys()):
        gateway = known.get(key)
        beat = gateway.heartbeat if gateway is not None else {}
        records, age = beat.get("outbox_records"), beat.get("backlog_age_s")
        sites.setdefault(key[0], []).append(GatewayStatus(
            gateway=key[1], devices=tuple(by_gateway.get(key, ())),
            last_batch_age_s=None if gateway is None else _age_s(now, gateway.last_stored_ms),
            outbox_records=records if isinstance(records, int) else None,
            backlog_age_s=float(age) if isinstance(age, int | float) else None,
        ))
    return FleetStatus(
        now_ms=now, stale_after_s=stale_after_s,
        sites=tuple(SiteStatus(name, tuple(gateways)) for name, gateways in sites.items()),
    )


def _device_status(row: DeviceRow, now: int, stale_after_s: float) -> DeviceStatus:
    beat = row.heartbeat
    seen_age = _age_s(now, row.last_seen_ms)
    if row.online is False:
        state = OFFLINE
    elif seen_age > stale_after_s:
        state = STALE
    else:
        state = ONLINE
    return DeviceStatus(
        device=row.device, gateway=row.gateway, state=state, last_seen_age_s=seen_age,
        heartbeat_age_s=None if row.heartbeat_ms is None else _age_s(now, row.heartbeat_ms),
        model=_text(beat.get("model", row.state.get("model"))),
        model_state=_text(beat.get("model_state")), group=_text(beat.get("group")),
        inference_ms_p50=_number(beat.get("inference_ms_p50")),
        inference_ms_p99=_number(beat.get("inference_ms_p99")),
        fps=_number(beat.get("fps")), buffered=_integer(beat.get("buffered")),
    )


def _age_s(now: int, then_ms: int) -> float:
    # A device clock ahead of the cloud's would give a negative age: say "just now" instead.
    return max(0.0, (now - then_ms) / 1000)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _number(value: Any) -> float | None:
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if is_number else None


def _integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
