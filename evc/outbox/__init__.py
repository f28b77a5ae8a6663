"""The SQLite store-and-forward queue used by gateways and device buffers."""

from evc.outbox.policy import DropPolicy, DropReason, Priority
from evc.outbox.store import NewRecord, Outbox, OutboxStats, StoredRecord, now_ms

__all__ = [
    "DropPolicy",
    "DropReason",
    "NewRecord",
    "Outbox",
    "OutboxStats",
    "Priority",
    "StoredRecord",
    "now_ms",
]
