"""What the outbox keeps, in which order it drains, and what it drops when full."""

from __future__ import annotations

from enum import IntEnum, StrEnum


class Priority(IntEnum):
    """Record classes, lowest first. Higher classes drain first and are evicted last."""

    SAMPLE = 0
    DETECTION = 1
    SUMMARY = 2
    EVENT = 3
    ALERT = 4


class DropPolicy(StrEnum):
    """What happens when a new record would push the outbox past its byte cap."""

    # Evict the lowest-priority, oldest records (possibly the new record itself) until it fits.
    EVICT_LOWEST_OLDEST = "evict_lowest_oldest"
    # Keep everything already stored and refuse the new record.
    REJECT_NEW = "reject_new"


class DropReason(StrEnum):
    """Why a record left the outbox without being delivered. Every drop is counted by reason."""

    EVICTED = "evicted"  # byte cap reached, removed by the eviction policy
    REJECTED = "rejected"  # byte cap reached, refused on arrival (reject_new)
    EXPIRED = "expired"  # older than its time-to-live
    TOO_LARGE = "too_large"  # larger than the whole outbox
