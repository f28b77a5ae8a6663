"""Staged rollout of a model version to a site: canary group first, then everyone.

A rollout publishes the version's signed manifest as the desired model of the site's canary
group. Devices report what they run in their heartbeats (model version, state, the version they
rolled back from and why). When every canary has run the new version healthily for
``promote_after_s``, the manifest becomes the site's default (group ``all``) and the canary
group's own entry is cleared, so the canaries follow the default again. If any device rolls the
version back, the rollout halts: the canary entry is cleared (canaries fall back to the default,
which is still the previous model) or, once promoted, the previous default is restored.

The controller is a small state machine over a SQLite table; :meth:`RolloutController.tick`
advances every active rollout and is called periodically by the cloud service. Its inputs are
passed in (the latest report of each device, a publisher of retained manifests), so that it is
tested without a broker and runs beside any store.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from evc.cloud.registry import ModelRegistry
from evc.errors import EvcError
from evc.models.signing import SignedManifest
from evc.wire import ALL_DEVICES
from evc.wire.topics import validate_name

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rollouts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    site TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    canary_group TEXT NOT NULL,
    promote_after_s REAL NOT NULL,
    stage TEXT NOT NULL,
    reason TEXT,
    started_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    healthy_since_ms INTEGER,
    previous TEXT
);
CREATE TABLE IF NOT EXISTS desired (
    site TEXT NOT NULL,
    grp TEXT NOT NULL,
    manifest TEXT NOT NULL,
    PRIMARY KEY (site, grp)
);
"""


class RolloutError(EvcError):
    """A rollout cannot be started or found."""


class Stage(StrEnum):
    """Where a rollout stands."""

    CANARY = "canary"  # the canary group has the manifest; waiting for healthy reports
    PROMOTED = "promoted"  # the site's default; waiting for every device to run it
    COMPLETE = "complete"  # every reporting device runs it
    HALTED = "halted"  # a device rolled it back; the previous model is desired again


ACTIVE_STAGES = (Stage.CANARY, Stage.PROMOTED)


@dataclass(frozen=True, slots=True)
class DeviceReport:
    """The latest model report of one device, from its heartbeats."""

    device: str
    group: str
    model: str | None
    sha256: str | None
    state: str | None
    failed: str | None  # the version it last rolled back from, if any
    failure: str | None
    ts_ms: int
    failed_sha256: str | None = None  # the SHA-256 of that model, from newer devices

    def runs(self, rollout: Rollout) -> bool:
        """True if this device runs the rollout's version."""
        if self.sha256:
            return self.sha256 == rollout.sha256
        return self.model in (rollout.version, f"{rollout.name}:{rollout.version}")

    def rejected(self, rollout: Rollout) -> bool:
        """True if this device rolled the rollout's version back since the rollout began.

        Compared by SHA-256 when the device reports it: a version string alone may be another
        model's.
        """
        if self.ts_ms < rollout.started_ms:
            return False
        if self.failed_sha256:
            return self.failed_sha256 == rollout.sha256
        return self.failed in (rollout.version, f"{rollout.name}:{rollout.version}", rollout.sha256)


@dataclass(frozen=True, slots=True)
class Rollout:
    """One rollout's row."""

    id: int
    site: str
    name: str
    version: str
    sha256: str
    canary_group: str
    promote_after_s: float
    stage: Stage
    reason: str | None
    started_ms: int
    updated_ms: int
    healthy_since_ms: int | None
    previous: str | None  # the site default's signed manifest JSON before promotion


class ManifestPublisher(Protocol):
    """Publishes (retained) or clears (``None``) the desired manifest of a site's group."""

    def __call__(self, site: str, group: str, manifest: SignedManifest | None) -> None: ...


Reports = Callable[[str], Sequence[DeviceReport]]


class RolloutController:
    """Starts rollouts and advances them on each :meth:`tick`.

    Args:
        path: the SQLite file of rollouts and of the desired manifests last published.
        registry: where the signed manifests come from.
        publish: publishes a group's desired manifest, retained.
        reports: the latest report of every device of a site.
        clock: milliseconds now (a parameter for tests).
    """

    def __init__(
        self, *, path: Path, registry: ModelRegistry, publish: ManifestPublisher,
        reports: Reports, clock: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        # The cloud worker ticks while `evc model rollout|status` read and write from another
        # process: WAL lets them read during a write, the timeout makes writers wait their turn.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._registry = registry
        self._publish = publish
        self._reports = reports
        self._clock = clock

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    # -- commands ------------------------------------------------------------------------------

    def start(
        self, *, site: str, name: str, version: str, canary_group: str,
        promote_after_s: float = 60.0,
    ) -> Rollout:
        """Start rolling ``name:version`` out to ``site``, canaries first.

        The site must have a default model (``set_default``, ``evc model deploy``): it is what
        every device returns to if the rollout halts.

        Raises:
            RolloutError: another rollout of the site is active, the site has no default model,
                or the canary group is ``all``.
            RegistryError: the version is not in the registry.
            PublishError: the canary manifest could not be published (nothing is recorded).
        """
        validate_name(site, what="site")
        validate_name(canary_group, what="device group")
        if canary_group == ALL_DEVICES:
            raise RolloutError(f"the canary group cannot be {ALL_DEVICES!r}, the whole site")
        signed = self._registry.get(name, version)
        now = self._clock()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")  # one start per site, also across processes
            try:
                rollout_id = self._insert(site, signed, canary_group, promote_after_s, now)
                self._set_desired(site, canary_group, signed)  # may raise: nothing recorded
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return self.get(rollout_id)

    def _insert(
        self, site: str, signed: SignedManifest, canary_group: str, promote_after_s: float,
        now: int,
    ) -> int:
        if any(r.stage in ACTIVE_STAGES for r in self._rollouts(site)):
            raise RolloutError(f"site {site!r} already has an active rollout")
        previous = self._desired_json(site, ALL_DEVICES)
        if previous is None:
            raise RolloutError(
                f"site {site!r} has no default model to fall back to if the rollout halts; "
                "make one the default first (evc model deploy)"
            )
        manifest = signed.manifest
        cursor = self._db.execute(
            "INSERT INTO rollouts (site, name, version, sha256, canary_group, "
            "promote_after_s, stage, started_ms, updated_ms, previous) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (site, manifest.name, manifest.version, manifest.sha256, canary_group,
             promote_after_s, Stage.CANARY.value, now, now, previous),
        )
        return int(cursor.lastrowid or 0)

    def abort(self, rollout_id: int, *, reason: str = "aborted by an operator") -> Rollout:
        """Halt an active rollout now, as if a device had rolled it back.

        Raises:
            RolloutError: no such rollout, or it is not active.
        """
        with self._lock:
            rollout = self._get(rollout_id)
            if rollout.stage not in ACTIVE_STAGES:
                raise RolloutError(f"rollout {rollout_id} is {rollout.stage.value}, not active")
            return self._halt(rollout, reason)

    def set_default(self, *, site: str, name: str, version: str) -> SignedManifest:
        """Make ``name:version`` the site's desired model at once, without stages."""
        signed = self._registry.get(name, version)
        with self._lock:
            self._set_desired(site, ALL_DEVICES, signed)
        return signed

    def get(self, rollout_id: int) -> Rollout:
        """One rollout by id."""
        with self._lock:
            return self._get(rollout_id)

    def _get(self, rollout_id: int) -> Rollout:
        row = self._db.execute("SELECT * FROM rollouts WHERE id = ?", (rollout_id,)).fetchone()
        if row is None:
            raise RolloutError(f"no rollout {rollout_id}")
        return _rollout(row)

    def rollouts(self, site: str | None = None) -> list[Rollout]:
        """Every rollout (of ``site``), newest first."""
        with self._lock:
            return self._rollouts(site)

    def desired(self, site: str) -> dict[str, SignedManifest]:
        """The manifests last published for each group of ``site``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT grp, manifest FROM desired WHERE site = ?", (site,)
            ).fetchall()
        return {row["grp"]: SignedManifest.parse(row["manifest"]) for row in rows}

    def reports(self, site: str) -> Sequence[DeviceReport]:
        """The latest report of every device of ``site``."""
        return self._reports(site)

    def republish(self) -> None:
        """Publish every desired manifest again (after the broker lost its retained store)."""
        with self._lock:
            rows = self._db.execute("SELECT site, grp, manifest FROM desired").fetchall()
            for row in rows:
                self._publish(row["site"], row["grp"], SignedManifest.parse(row["manifest"]))

    # -- the state machine ---------------------------------------------------------------------

    def tick(self) -> list[Rollout]:
        """Advance every active rollout; return those whose stage changed."""
        changed = []
        with self._lock:
            for rollout in self._rollouts(None):
                if rollout.stage in ACTIVE_STAGES:
                    after = self._advance(rollout, self._reports(rollout.site))
                    if after.stage is not rollout.stage:
                        changed.append(after)
        return changed

    def _advance(self, rollout: Rollout, reports: Sequence[DeviceReport]) -> Rollout:
        failed = [r for r in reports if r.rejected(rollout)]
        if failed:
            first = failed[0]
            return self._halt(rollout, f"{first.device} rolled it back: {first.failure}")
        if rollout.stage is Stage.CANARY:
            return self._watch_canaries(rollout, reports)
        if reports and all(r.runs(rollout) for r in reports):
            return self._update(rollout, stage=Stage.COMPLETE, reason="every device runs it")
        return rollout

    def _watch_canaries(self, rollout: Rollout, reports: Sequence[DeviceReport]) -> Rollout:
        canaries = [r for r in reports if r.group == rollout.canary_group]
        healthy = bool(canaries) and all(
            r.runs(rollout) and r.state in ("probation", "serving") for r in canaries
        )
        now = self._clock()
        if not healthy:
            return self._update(rollout, healthy_since_ms=None)
        since = rollout.healthy_since_ms or now
        if now - since < rollout.promote_after_s * 1000:
            return self._update(rollout, healthy_since_ms=since)
        signed = self._registry.get(rollout.name, rollout.version)
        self._set_desired(rollout.site, ALL_DEVICES, signed)
        self._set_desired(rollout.site, rollout.canary_group, None)
        return self._update(
            rollout, stage=Stage.PROMOTED, healthy_since_ms=since,
            reason=f"{len(canaries)} canar{'y' if len(canaries) == 1 else 'ies'} healthy for "
            f"{rollout.promote_after_s:g} s",
        )

    def _halt(self, rollout: Rollout, reason: str) -> Rollout:
        self._set_desired(rollout.site, rollout.canary_group, None)
        if rollout.stage is Stage.PROMOTED:
            previous = SignedManifest.parse(rollout.previous) if rollout.previous else None
            self._set_desired(rollout.site, ALL_DEVICES, previous)
        return self._update(rollout, stage=Stage.HALTED, reason=reason)

    # -- storage -------------------------------------------------------------------------------

    def _rollouts(self, site: str | None) -> list[Rollout]:
        rows = self._db.execute(
            "SELECT * FROM rollouts WHERE ? IS NULL OR site = ? ORDER BY id DESC", (site, site)
        )
        return [_rollout(row) for row in rows]

    def _update(
        self, rollout: Rollout, *, stage: Stage | None = None, reason: str | None = None,
        healthy_since_ms: int | object | None = ...,
    ) -> Rollout:
        since = rollout.healthy_since_ms if healthy_since_ms is ... else healthy_since_ms
        self._db.execute(
            "UPDATE rollouts SET stage = ?, reason = ?, healthy_since_ms = ?, updated_ms = ? "
            "WHERE id = ?",
            ((stage or rollout.stage).value, reason or rollout.reason, since, self._clock(),
             rollout.id),
        )
        row = self._db.execute("SELECT * FROM rollouts WHERE id = ?", (rollout.id,)).fetchone()
        return _rollout(row)

    def _desired_json(self, site: str, group: str) -> str | None:
        row = self._db.execute(
            "SELECT manifest FROM desired WHERE site = ? AND grp = ?", (site, group)
        ).fetchone()
        return None if row is None else str(row[0])

    def _set_desired(self, site: str, group: str, signed: SignedManifest | None) -> None:
        # Publish first: if the broker is unreachable the table keeps the last published state,
        # and `republish` sends it again.
        self._publish(site, group, signed)
        if signed is None:
            self._db.execute("DELETE FROM desired WHERE site = ? AND grp = ?", (site, group))
        else:
            self._db.execute(
                "INSERT OR REPLACE INTO desired (site, grp, manifest) VALUES (?, ?, ?)",
                (site, group, signed.to_json().decode()),
            )


def _rollout(row: sqlite3.Row) -> Rollout:
    since, previous = row["healthy_since_ms"], row["previous"]
    return Rollout(
        id=int(row["id"]), site=row["site"], name=row["name"], version=row["version"],
        sha256=row["sha256"], canary_group=row["canary_group"],
        promote_after_s=float(row["promote_after_s"]), stage=Stage(row["stage"]),
        reason=row["reason"], started_ms=int(row["started_ms"]),
        updated_ms=int(row["updated_ms"]),
        healthy_since_ms=None if since is None else int(since),
        previous=None if previous is None else str(previous),
    )
