"""docs/METRICS.md lists exactly the metrics EVC exports, with their process, type and labels.

The exported side is read from the code: each process's metrics class (a class of
``evc.metrics`` named ``...Metrics`` that builds its own registry) is instantiated and its
registry collected.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from evc import metrics as evc_metrics

CATALOGUE = Path(__file__).resolve().parents[2] / "docs" / "METRICS.md"

_ROW = re.compile(r"^\|\s*`(?P<name>evc_\w+)`\s*\|(?P<rest>.*)\|\s*$")
_BACKTICKED = re.compile(r"`(\w+)`")


@dataclass(frozen=True)
class Entry:
    """One metric: where it comes from, what it is and which labels it carries."""

    process: str
    name: str
    type: str
    labels: frozenset[str]
    unit: str = ""


def _labels_of(instance: Any) -> dict[str, frozenset[str]]:
    # registry.collect() shows labels only on samples, which a labelled metric lacks until it is
    # first counted; the metric objects know their label names (private, read here only).
    found: dict[str, frozenset[str]] = {}
    for value in vars(instance).values():
        if isinstance(value, MetricWrapperBase):
            found[value._name] = frozenset(value._labelnames)
        elif type(value).__module__ == evc_metrics.__name__ and hasattr(value, "__dict__"):
            found.update(_labels_of(value))
    return found


def _query_name(name: str, kind: str) -> str:
    # The name a user types: counters end in _total on /metrics; histograms go by their base.
    return f"{name}_total" if kind == "counter" else name


def exported() -> dict[str, Entry]:
    """Every metric of every EVC process, by the name it is queried under."""
    entries: dict[str, Entry] = {}
    for class_name, cls in inspect.getmembers(evc_metrics, inspect.isclass):
        if cls.__module__ != evc_metrics.__name__ or not class_name.endswith("Metrics"):
            continue
        parameters = inspect.signature(cls).parameters.values()
        if any(p.default is inspect.Parameter.empty for p in parameters):
            continue  # a part of a process's metrics (outbox, pipeline), reached through it
        instance = cls()
        if not isinstance(getattr(instance, "registry", None), CollectorRegistry):
            continue
        process = class_name.removesuffix("Metrics").lower()
        labels = _labels_of(instance)
        for family in instance.registry.collect():
            from_samples = {key for s in family.samples for key in s.labels} - {"le", "quantile"}
            name = _query_name(family.name, family.type)
            entries[name] = Entry(
                process, name, family.type, labels.get(family.name, frozenset(from_samples))
            )
    return entries


def catalogued(text: str) -> dict[str, Entry]:
    """Every metric row of a catalogue; its process is the ``## `` heading above it."""
    entries: dict[str, Entry] = {}
    process = ""
    for line in text.splitlines():
        if line.startswith("## "):
            process = line[3:].split()[0].lower()
            continue
        row = _ROW.match(line)
        if not row:
            continue
        cells = [cell.strip() for cell in row["rest"].split("|")]
        assert len(cells) == 4, f"expected type | labels | unit | meaning: {line}"
        kind, labels, unit, meaning = cells
        assert meaning, f"{row['name']} has no meaning"
        assert row["name"] not in entries, f"{row['name']} listed twice"
        entries[row["name"]] = Entry(
            process, row["name"], kind, frozenset(_BACKTICKED.findall(labels)), unit
        )
    return entries


def drift(code: dict[str, Entry], doc: dict[str, Entry]) -> list[str]:
    """How a catalogue differs from the code: missing, stale, or described differently."""
    problems = [f"{name}: exported, not catalogued" for name in sorted(code.keys() - doc.keys())]
    problems += [f"{name}: catalogued, not exported" for name in sorted(doc.keys() - code.keys())]
    for name in sorted(code.keys() & doc.keys()):
        said = (doc[name].process, doc[name].type, sorted(doc[name].labels))
        true = (code[name].process, code[name].type, sorted(code[name].labels))
        if said != true:
            problems.append(f"{name}: catalogued as {said}, the code says {true}")
    return problems


EXPORTED = exported()
CATALOGUED = catalogued(CATALOGUE.read_text())


def test_processes_are_found() -> None:
    assert {"gateway", "cloud"} <= {entry.process for entry in EXPORTED.values()}
    assert EXPORTED["evc_gateway_outbox_dropped_total"].labels == {"reason", "priority"}
    assert EXPORTED["evc_gateway_uplink_ack_seconds"].type == "histogram"


def test_catalogue_matches_the_code() -> None:
    problems = drift(EXPORTED, CATALOGUED)
    assert not problems, "docs/METRICS.md is out of date:\n" + "\n".join(problems)


@pytest.mark.parametrize("name", sorted(CATALOGUED))
def test_catalogue_unit_agrees_with_the_name(name: str) -> None:
    unit = CATALOGUED[name].unit
    assert unit, f"{name} has no unit"
    for suffix, expected in (("_seconds", "seconds"), ("_bytes", "bytes")):
        if name.removesuffix("_total").endswith(suffix):
            assert unit == expected, f"{name}: unit {unit!r}, its name says {expected!r}"


def test_drift_is_caught() -> None:
    text = CATALOGUE.read_text()
    dropped = "| `evc_gateway_outbox_dropped_total` | counter | `reason`, `priority` |"
    received = "| `evc_gateway_received_messages_total` | counter | `channel` |"
    assert dropped in text
    assert received in text
    text = text.replace(dropped, "| `evc_gateway_outbox_dropped_total` | counter | `reason` |")
    text = "\n".join(line for line in text.splitlines() if not line.startswith(received))
    text += "\n## Gateway\n| `evc_gateway_ghost_total` | counter | — | records | Not real. |\n"
    assert drift(EXPORTED, catalogued(text)) == [
        "evc_gateway_received_messages_total: exported, not catalogued",
        "evc_gateway_ghost_total: catalogued, not exported",
        "evc_gateway_outbox_dropped_total: catalogued as ('gateway', 'counter', ['reason']), "
        "the code says ('gateway', 'counter', ['priority', 'reason'])",
    ]
