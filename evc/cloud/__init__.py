"""The cloud tier: ingest workers, record stores, the fleet view, the model registry, rollouts
and the learning loop (dataset, labellers, export, trainer)."""

from evc.cloud.dataset import Dataset, DatasetError, Item, ItemId, Labels
from evc.cloud.export import ExportResult, export
from evc.cloud.fleet import FleetStatus, fleet_status
from evc.cloud.ingest import CloudIngest
from evc.cloud.labelling import Labeller, PredictionLabeller, SyntheticTruthLabeller
from evc.cloud.learning import RetrainResult, retrain, retrain_and_publish
from evc.cloud.models import ModelService, PublishError, RetainedPublisher, StoreReports
from evc.cloud.registry import ModelRegistry, RegistryError, compatibility_of
from evc.cloud.rollout import DeviceReport, Rollout, RolloutController, RolloutError, Stage
from evc.cloud.store import (
    DeviceRow,
    GatewayRow,
    IncomingRecord,
    InsertResult,
    RecordStore,
    SqliteRecordStore,
    StoredRecord,
    StoreError,
    StoreStats,
)
from evc.cloud.trainer import (
    Evaluation,
    GateConfig,
    GateDecision,
    SampleModelTrainer,
    Trainer,
    TrainResult,
    evaluate_candidate,
    gate,
)

__all__ = [
    "CloudIngest",
    "Dataset",
    "DatasetError",
    "DeviceReport",
    "DeviceRow",
    "Evaluation",
    "ExportResult",
    "FleetStatus",
    "GateConfig",
    "GateDecision",
    "GatewayRow",
    "IncomingRecord",
    "InsertResult",
    "Item",
    "ItemId",
    "Labeller",
    "Labels",
    "ModelRegistry",
    "ModelService",
    "PredictionLabeller",
    "PublishError",
    "RecordStore",
    "RegistryError",
    "RetainedPublisher",
    "RetrainResult",
    "Rollout",
    "RolloutController",
    "RolloutError",
    "SampleModelTrainer",
    "SqliteRecordStore",
    "Stage",
    "StoreError",
    "StoreReports",
    "StoreStats",
    "StoredRecord",
    "SyntheticTruthLabeller",
    "TrainResult",
    "Trainer",
    "compatibility_of",
    "evaluate_candidate",
    "export",
    "fleet_status",
    "gate",
    "retrain",
    "retrain_and_publish",
]
