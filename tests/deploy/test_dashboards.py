"""The Grafana dashboards and Prometheus alert rules name only metrics EVC exports.

Exported names are read from the metrics classes themselves (each process's registry, collected),
so a metric renamed or removed in ``evc/metrics.py`` fails here until the dashboards follow.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from evc import metrics as evc_metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "deploy" / "grafana").glob("*.json"))
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
SCRAPE_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"

# Series Prometheus makes itself for every scrape target.
SCRAPE_SERIES = {"up": frozenset({"job", "instance"})}
# Labels the scrape configuration adds to every EVC target (deploy/prometheus/prometheus.yml).
TARGET_LABELS = frozenset({"job", "instance", "site", "gateway", "__name__"})


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


AGGREGATIONS = _words(
    "sum avg min max count stddev stdvar topk bottomk quantile count_values group limitk "
    "limit_ratio"
)
FUNCTIONS = AGGREGATIONS | _words(
    """abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil changes
    clamp clamp_max clamp_min cos cosh count_over_time day_of_month day_of_week day_of_year
    days_in_month deg delta deriv exp floor histogram_avg histogram_count histogram_fraction
    histogram_quantile histogram_stddev histogram_stdvar histogram_sum holt_winters idelta
    increase irate label_join label_replace last_over_time ln log10 log2 mad_over_time
    max_over_time min_over_time minute month pi predict_linear present_over_time
    quantile_over_time rad rate resets round scalar sgn sin sinh sort sort_by_label
    sort_by_label_desc sort_desc sqrt stddev_over_time stdvar_over_time sum_over_time tan tanh
    time timestamp vector year"""
)
# Clauses whose parenthesised argument is a list of label names, not an expression.
GROUPING = _words("by without on ignoring group_left group_right")
KEYWORDS = _words("and or unless bool offset inf nan atan2")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

_TOKEN = re.compile(
    r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    | (?P<variable>\$\{?\w+(?::\w+)?\}?)
    | (?P<number>0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?(?:ms|[smhdwy])*)
    | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
    | (?P<open>[({\[])
    | (?P<close>[)}\]])
    | (?P<other>\S)
    """,
    re.VERBOSE,
)


# ---------------------------------------------------------------- what the code exports


def process_metrics() -> Iterator[tuple[str, Any]]:
    """Each process's metrics object, built fresh: (process, instance), e.g. ("gateway", ...).

    A process's metrics class is a class of ``evc.metrics`` whose name ends in ``Metrics``,
    built without arguments and owning its own ``registry``.
    """
    for name, cls in inspect.getmembers(evc_metrics, inspect.isclass):
        if cls.__module__ != evc_metrics.__name__ or not name.endswith("Metrics"):
            continue
        required = [
            p for p in inspect.signature(cls).parameters.values()
            if p.default is inspect.Parameter.empty
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        if required:
            continue  # a part of a process's metrics (outbox, pipeline), reached through it
        instance = cls()
        if isinstance(getattr(instance, "registry", None), CollectorRegistry):
            yield name.removesuffix("Metrics").lower(), instance


def wrapper_labels(instance: Any) -> dict[str, tuple[str, ...]]:
    """Label names of every prometheus_client metric reachable from ``instance``, by name.

    ``registry.collect()`` shows labels only on samples, and a labelled metric has none until it
    is first counted; the metric objects know their label names (a private attribute, read here
    only).
    """
    found: dict[str, tuple[str, ...]] = {}
    for value in vars(instance).values():
        if isinstance(value, MetricWrapperBase):
            found[value._name] = tuple(value._labelnames)
        elif type(value).__module__ == evc_metrics.__name__ and hasattr(value, "__dict__"):
            found.update(wrapper_labels(value))
    return found


def exposed_names(family_name: str, family_type: str) -> set[str]:
    """The series names a family appears under on /metrics (what PromQL can select)."""
    if family_type == "counter":
        return {f"{family_name}_total"}
    if family_type == "histogram":
        return {family_name + suffix for suffix in HISTOGRAM_SUFFIXES}
    return {family_name}


def exported_series() -> dict[str, frozenset[str]]:
    """Every series name EVC's processes expose, with the label names it may carry."""
    series: dict[str, frozenset[str]] = {}
    for _process, instance in process_metrics():
        labels = wrapper_labels(instance)
        for family in instance.registry.collect():
            names = exposed_names(family.name, family.type)
            names |= {sample.name for sample in family.samples}
            sample_labels = {key for sample in family.samples for key in sample.labels}
            label_set = frozenset(labels.get(family.name, ())) | sample_labels | {"le"}
            for name in names:
                series[name] = label_set
    return series


EXPORTED = exported_series()


# ---------------------------------------------------------------- PromQL


def selectors(expr: str) -> list[tuple[str, frozenset[str]]]:
    """Metric names an expression selects, each with the label names its matchers use.

    Raises:
        ValueError: an identifier followed by ``(`` that is not a PromQL function.
    """
    tokens = [
        (m.lastgroup, m.group())
        for m in _TOKEN.finditer(expr)
        if m.lastgroup not in ("string", "variable", "number")
    ]
    found: list[tuple[str, frozenset[str]]] = []
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "open" and text == "{":  # a bare selector: {__name__="..."}
            i, _ = _skip_group(tokens, i)
            continue
        if kind == "open" and text == "[":  # a range or subquery: [5m], [1h:1m]
            i, _ = _skip_group(tokens, i)
            continue
        if kind != "ident":
            i += 1
            continue
        if text in GROUPING and following == "(":
            i, _ = _skip_group(tokens, i + 1)
            continue
        if text in AGGREGATIONS and following in ("by", "without"):  # sum by (x) (...)
            i += 1
            continue
        if following == "(":
            if text not in FUNCTIONS:
                raise ValueError(f"unknown PromQL function {text!r} in {expr!r}")
            i += 1
            continue
        if text in KEYWORDS or text in GROUPING:
            i += 1
            continue
        labels: frozenset[str] = frozenset()
        i += 1
        if following == "{":
            i, inside = _skip_group(tokens, i)
            labels = _matcher_labels(inside)
        found.append((text, labels))
    return found


def _skip_group(tokens: list[tuple[str | None, str]], start: int) -> tuple[int, list[str]]:
    """Skip the bracketed group opening at ``start``; return the index after it and its tokens."""
    depth, i, inside = 0, start, []
    while i < len(tokens):
        kind, text = tokens[i]
        depth += {"open": 1, "close": -1}.get(kind or "", 0)
        i += 1
        if depth == 0:
            return i, inside[1:]
        inside.append(text)
    raise ValueError(f"unbalanced brackets in {' '.join(t for _, t in tokens)!r}")


def _matcher_labels(inside: list[str]) -> frozenset[str]:
    # Inside {...}, label names are the identifiers followed by a match operator (=, !=, =~, !~).
    return frozenset(
        text for text, after in zip(inside, [*inside[1:], ""], strict=True)
        if re.fullmatch(r"[a-zA-Z_]\w*", text) and after in ("=", "!")
    )


def metric_names(expr: str) -> set[str]:
    """The series names ``expr`` selects (a histogram's as ``_bucket``, ``_sum``, ``_count``)."""
    return {name for name, _ in selectors(expr)}


def unknown_metrics(expr: str) -> list[str]:
    """Problems with the metrics ``expr`` names: names EVC does not export, or wrong labels."""
    problems = []
    for name, labels in selectors(expr):
        known = EXPORTED.get(name, SCRAPE_SERIES.get(name))
        if known is None:
            base = next((name.removesuffix(s) for s in HISTOGRAM_SUFFIXES if name.endswith(s)), "")
            hint = f" (base metric {base!r})" if base else ""
            problems.append(f"{name}{hint} is not exported")
            continue
        extra = labels - known - TARGET_LABELS
        if extra:
            problems.append(f"{name} has no label {sorted(extra)}")
    return problems


# ---------------------------------------------------------------- where the expressions are


def load_dashboard(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    assert isinstance(data, dict), path
    return data


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def dashboard_exprs(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable of a dashboard."""
    for panel in all_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield f"panel {panel['id']} {panel.get('title')!r}", target["expr"]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable["query"]
        query = query["query"] if isinstance(query, dict) else query
        # label_values(selector, label): the selector is PromQL, the label is not a metric.
        match = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query, re.DOTALL)
        if match:
            yield f"variable {variable['name']!r}", match.group(1)
        elif not re.fullmatch(r"\s*label_values\(\s*\w+\s*\)\s*", query):
            yield f"variable {variable['name']!r}", query


def alert_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(ALERTS.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


# ---------------------------------------------------------------- tests


def test_the_code_exports_metrics_of_the_gateway_and_the_cloud() -> None:
    processes = {process for process, _ in process_metrics()}
    assert {"gateway", "cloud"} <= processes
    assert "evc_gateway_outbox_dropped_total" in EXPORTED
    assert "evc_gateway_uplink_ack_seconds_bucket" in EXPORTED
    assert {"reason", "priority"} <= EXPORTED["evc_gateway_outbox_dropped_total"]


def test_dashboards_exist() -> None:
    names = {path.stem for path in DASHBOARDS}
    assert {"evc-fleet", "evc-gateway", "evc-devices"} <= names


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_is_importable_json(path: Path) -> None:
    dashboard = load_dashboard(path)
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["uid"] == path.stem
    inputs = {item["name"]: item for item in dashboard["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    for panel in all_panels(dashboard["panels"]):
        for owner in (panel, *panel.get("targets", [])):
            if "datasource" in owner:
                assert owner["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_panel_ids_are_unique(path: Path) -> None:
    ids = [panel["id"] for panel in all_panels(load_dashboard(path)["panels"])]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_names_only_exported_metrics(path: Path) -> None:
    exprs = list(dashboard_exprs(load_dashboard(path)))
    assert exprs, "a dashboard without queries"
    problems = [f"{where}: {p}" for where, expr in exprs for p in unknown_metrics(expr)]
    assert not problems, "\n".join(problems)
    assert any(metric_names(expr) & EXPORTED.keys() for _, expr in exprs)


def test_alert_rules_are_complete() -> None:
    rules = alert_rules()
    assert rules
    for rule in rules:
        name = rule.get("alert", "?")
        assert rule.get("alert"), rule
        assert rule.get("expr"), name
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), name
        assert rule.get("labels", {}).get("severity") in ("critical", "warning", "info"), name
        assert rule.get("annotations", {}).get("summary"), name
        assert rule["annotations"].get("description"), name
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    assert any(
        "up" in metric_names(rule["expr"]) and 'job="evc-gateway"' in rule["expr"]
        for rule in rules
    ), "no gateway-down rule"


def test_alert_rules_name_only_exported_metrics() -> None:
    problems = [
        f"{rule['alert']}: {p}" for rule in alert_rules() for p in unknown_metrics(rule["expr"])
    ]
    assert not problems, "\n".join(problems)


def test_scrape_example_sets_the_labels_dashboards_and_rules_rely_on() -> None:
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    assert config["rule_files"] == [ALERTS.name]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert {"evc-gateway", "evc-cloud"} <= jobs.keys()
    for static in jobs["evc-gateway"]["static_configs"]:
        assert {"site", "gateway"} <= static["labels"].keys(), static
    # The checker allows exactly the labels the scrape adds, besides each metric's own.
    statics = [static for job in jobs.values() for static in job["static_configs"]]
    added = {key for static in statics for key in static.get("labels", {})}
    assert added | {"job", "instance", "__name__"} == TARGET_LABELS


# ---------------------------------------------------------------- the checker itself


def test_tokenizer_finds_metrics_and_skips_functions_labels_and_ranges() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, site) (rate(evc_gateway_uplink_ack_seconds_bucket'
        '{site=~"$site", gateway="a b"}[$__rate_interval] offset 1h)))'
        " / on (site) group_left (gateway) evc_gateway_fog_connected"
        ' and up{job="evc-gateway"} > 1e3 or vector(0) unless evc_cloud_connected'
    )
    assert metric_names(expr) == {
        "evc_gateway_uplink_ack_seconds_bucket", "evc_gateway_fog_connected", "up",
        "evc_cloud_connected",
    }
    assert dict(selectors(expr))["evc_gateway_uplink_ack_seconds_bucket"] == {"site", "gateway"}
    assert unknown_metrics(expr) == []


def test_checker_rejects_a_metric_the_code_does_not_export() -> None:
    assert unknown_metrics("sum(rate(evc_gateway_not_a_metric_total[5m]))") == [
        "evc_gateway_not_a_metric_total is not exported"
    ]
    # A histogram is selected by its series, never by its bare name.
    assert unknown_metrics("evc_gateway_uplink_ack_seconds") != []
    assert unknown_metrics("evc_gateway_uplink_ack_seconds_sum") == []
    # A counter's series ends in _total.
    assert unknown_metrics("evc_gateway_committed_records") != []


def test_checker_rejects_a_label_the_metric_does_not_have() -> None:
    assert unknown_metrics('evc_gateway_outbox_dropped_total{reasons="expired"}') == [
        "evc_gateway_outbox_dropped_total has no label ['reasons']"
    ]


def test_checker_rejects_an_unknown_function() -> None:
    with pytest.raises(ValueError, match="unknown PromQL function"):
        selectors("rat(evc_gateway_uplink_bytes_total[5m])")


def test_a_dashboard_naming_a_missing_metric_fails(tmp_path: Path) -> None:
    dashboard = load_dashboard(DASHBOARDS[0])
    panel = next(p for p in all_panels(dashboard["panels"]) if p.get("targets"))
    panel["targets"][0]["expr"] = "sum(evc_gateway_outbox_backlog_recordz)"
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(dashboard))
    exprs = dashboard_exprs(load_dashboard(broken))
    problems = [p for _, expr in exprs for p in unknown_metrics(expr)]
    assert problems == ["evc_gateway_outbox_backlog_recordz is not exported"]
