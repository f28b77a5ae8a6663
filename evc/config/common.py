"""What every role's config shares: the strict base model, brokers, metrics, model trust, loading.

:func:`load_config` reports the first problems with their key path (``outbox.max_bytes: ...``) so
a typo never goes unnoticed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from evc.errors import ConfigError, TopicError
from evc.mqtt.client import BrokerAddress
from evc.outbox import Priority
from evc.wire.topics import validate_name

__all__ = [
    "MAX_TTL_S",
    "BrokerConfig",
    "ClassName",
    "MetricsConfig",
    "ModelTrustConfig",
    "PositiveSeconds",
    "StrictModel",
    "by_priority",
    "load_config",
    "valid_name",
]

Model = TypeVar("Model", bound=BaseModel)
Value = TypeVar("Value")


# Record classes as config keys, lowest first: the names of evc.outbox.Priority in lower case.
ClassName = Literal["sample", "detection", "summary", "event", "alert"]
PositiveSeconds = Annotated[float, Field(gt=0, le=10 * 365 * 24 * 3600.0)]


def by_priority(values: Mapping[ClassName, Value]) -> dict[Priority, Value]:
    """Turn a ``{class name: value}`` config map into a ``{Priority: value}`` map."""
    return {Priority[name.upper()]: value for name, value in values.items()}


# A finite bound keeps deadlines inside SQLite's 64-bit integers (10 years).
MAX_TTL_S = 10 * 365 * 24 * 3600.0


class StrictModel(BaseModel):
    """Base of every config model: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def valid_name(value: str, what: str) -> str:
    """Check a site, device, gateway or group name for use in topics.

    Raises:
        ValueError: the name cannot be used; pydantic reports it with the key path.
    """
    try:
        return validate_name(value, what=what)
    except TopicError as exc:
        raise ValueError(str(exc)) from exc


class BrokerConfig(StrictModel):
    """How to reach one MQTT broker."""

    url: str = Field(
        "mqtt://127.0.0.1:1883",
        title="Broker URL",
        description="mqtt://[user[:password]@]host[:port], or mqtts:// for TLS.",
    )
    ca_file: str | None = Field(
        None, title="CA file", description="PEM file of the CA that signed the broker's cert."
    )
    cert_file: str | None = Field(
        None, title="Client certificate",
        description="PEM file of this client's certificate, for brokers that require one "
        "(mutual TLS, mqtts:// only); its CN is the username when the broker takes the identity "
        "from the certificate.",
    )
    key_file: str | None = Field(
        None, title="Client key",
        description="PEM file of the client certificate's private key; null if cert_file holds it.",
    )

    @field_validator("url")
    @classmethod
    def _parse_url(cls, url: str) -> str:
        try:
            BrokerAddress.from_url(url)
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc  # pydantic reports ValueErrors with the key path
        return url

    @model_validator(mode="after")
    def _check_client_certificate(self) -> BrokerConfig:
        try:
            self.address  # noqa: B018  # built for its checks: cert needs mqtts://, key needs cert
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        return self

    @property
    def address(self) -> BrokerAddress:
        """The parsed address."""
        return BrokerAddress.from_url(
            self.url, ca_file=self.ca_file, cert_file=self.cert_file, key_file=self.key_file
        )


class MetricsConfig(StrictModel):
    """The Prometheus endpoint."""

    port: int | None = Field(
        None, ge=0, le=65535, description="Port of /metrics; null disables it, 0 picks a free one."
    )
    host: str = Field("127.0.0.1", description="Address the metrics endpoint listens on.")


class ModelTrustConfig(StrictModel):
    """Model updates this node accepts: signed by one of these keys."""

    trusted_keys: list[Path] = Field(
        default_factory=list,
        description="Ed25519 public keys (.pub files, or folders of them) a model manifest "
        "must be signed with; empty: this node takes no model updates.",
    )


def load_config(path: str | Path, model: type[Model]) -> Model:
    """Read a YAML file into ``model``.

    Raises:
        ConfigError: the file cannot be read, is not YAML, or does not validate; the message
            names each bad key by its dotted path.
    """
    source = Path(path)
    try:
        data = yaml.safe_load(source.read_text()) or {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config {source}: {exc}", path=str(source)) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid YAML: {exc}", path=str(source)) from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping", path=str(source))
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(source, exc), path=str(source)) from exc


def _describe(source: Path, exc: ValidationError) -> str:
    lines = [f"{source}: {exc.error_count()} invalid setting(s)"]
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        lines.append(f"  {key}: {error['msg']}")
    return "\n".join(lines)
