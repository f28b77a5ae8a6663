"""The cloud tier: ingest workers and record stores."""

from evc.cloud.ingest import CloudIngest
from evc.cloud.store import (
    IncomingRecord,
    InsertResult,
    RecordStore,
    SqliteRecordStore,
    StoreError,
    StoreStats,
)

__all__ = [
    "CloudIngest",
    "IncomingRecord",
    "InsertResult",
    "RecordStore",
    "SqliteRecordStore",
    "StoreError",
    "StoreStats",
]
