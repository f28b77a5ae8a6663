"""Which operator class each config ``type`` selects, and the discriminated union over them.

Built-in operators register themselves when :mod:`evc.gateway.pipeline` is imported. A user's own
operator is one config model (with ``type: Literal["my-op"]``) and one :class:`Operator` class::

    register_operator(MyOpConfig, MyOp)

after which ``{type: my-op, ...}`` is valid in a gateway's ``pipeline:`` list.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Union, get_args

from pydantic import Field, TypeAdapter

from evc.gateway.pipeline.base import Operator, OperatorConfig, PipelineListener
from evc.gateway.pipeline.chain import Pipeline

_OPERATORS: dict[str, tuple[type[OperatorConfig], type[Operator[Any]]]] = {}
_adapter: TypeAdapter[list[OperatorConfig]] | None = None


def register_operator(config: type[OperatorConfig], operator: type[Operator[Any]]) -> None:
    """Make ``operator`` selectable by the ``type`` literal of its ``config`` model.

    Raises:
        ValueError: ``config`` has no single-valued ``type: Literal[...]`` field, or its type
            is already registered to another operator.
    """
    global _adapter  # noqa: PLW0603 -- the cached union is rebuilt when the registry grows
    field = config.model_fields.get("type")
    values = get_args(field.annotation) if field is not None else ()
    if len(values) != 1 or not isinstance(values[0], str):
        raise ValueError(f"{config.__name__} needs a field type: Literal['<name>']")
    name = values[0]
    known = _OPERATORS.get(name)
    if known is not None and known != (config, operator):
        raise ValueError(f"operator type {name!r} is already registered to {known[1].__name__}")
    _OPERATORS[name] = (config, operator)
    _adapter = None


def operator_types() -> list[str]:
    """The registered operator types."""
    return sorted(_OPERATORS)


def validate_operators(value: Any) -> list[OperatorConfig]:
    """Validate a ``pipeline:`` list against the union of registered operator configs.

    Errors keep their key path (``pipeline.1.devices.cam-1.0``) when raised inside a model.
    """
    global _adapter  # noqa: PLW0603 -- see register_operator
    if _adapter is None:
        configs = tuple(config for config, _ in _OPERATORS.values())
        # A discriminator needs a union of at least two models.
        item: Any = configs[0] if len(configs) == 1 else Annotated[
            Union[configs], Field(discriminator="type")  # noqa: UP007 -- a runtime tuple of types
        ]
        _adapter = TypeAdapter(list[item])
    return _adapter.validate_python(value)


def build_pipeline(
    configs: Sequence[OperatorConfig], *, listener: PipelineListener | None = None
) -> Pipeline:
    """Build each configured operator, in order."""
    operators = [_OPERATORS[str(getattr(c, "type", ""))][1](c) for c in configs]
    return Pipeline(operators, listener=listener)
