"""The image's health probe finds the daemon's config and asks its /metrics endpoint."""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "evc_healthcheck", ROOT / "deploy" / "docker" / "healthcheck.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


healthcheck = _load()


class _Metrics(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/metrics" else 404)
        self.end_headers()
        self.wfile.write(b"evc_up 1\n")

    def log_message(self, *_: object) -> None:
        pass  # quiet: pytest would show it


@pytest.fixture
def metrics_port() -> Iterator[int]:
    server = HTTPServer(("127.0.0.1", 0), _Metrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join()


def _config(tmp_path: Path, metrics: str) -> Path:
    path = tmp_path / "cloud.yaml"
    path.write_text(f"cloud:\n  url: mqtt://127.0.0.1:1884\nmetrics:\n{metrics}")
    return path


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["/usr/local/bin/python", "/usr/local/bin/evc", "gateway", "run", "--config", "g.yaml"],
         ("gateway", Path("g.yaml"))),
        (["evc", "cloud", "run", "-c", "c.yaml"], ("cloud", Path("c.yaml"))),
        (["evc", "cloud", "run", "--config=c.yaml"], ("cloud", Path("c.yaml"))),
        (["evc", "--help"], None),
        (["evc", "broker", "up"], None),
        (["evc", "device", "simulate", "--config", "d.yaml"], None),
    ],
)
def test_daemon_config_reads_the_command_line(
    argv: list[str], expected: tuple[str, Path] | None
) -> None:
    assert healthcheck.daemon_config(argv) == expected


def test_healthy_when_metrics_answer(tmp_path: Path, metrics_port: int) -> None:
    config = _config(tmp_path, f"  host: 0.0.0.0\n  port: {metrics_port}\n")

    code, reason = healthcheck.probe(["evc", "cloud", "run", "--config", str(config)])

    assert code == healthcheck.HEALTHY, reason


def test_unhealthy_when_nothing_answers(tmp_path: Path, metrics_port: int) -> None:
    config = _config(tmp_path, f"  port: {metrics_port + 1 if metrics_port < 65535 else 1}\n")

    code, _ = healthcheck.probe(["evc", "cloud", "run", "--config", str(config)])

    assert code == healthcheck.UNHEALTHY


def test_healthy_without_an_endpoint_to_probe(tmp_path: Path) -> None:
    config = _config(tmp_path, "  port: null\n")

    assert healthcheck.probe(["evc", "cloud", "run", "--config", str(config)])[0] == 0
    assert healthcheck.probe(["evc", "--help"])[0] == 0


def test_unhealthy_on_an_invalid_config(tmp_path: Path) -> None:
    config = _config(tmp_path, "  prot: 9102\n")

    code, reason = healthcheck.probe(["evc", "cloud", "run", "--config", str(config)])

    assert code == healthcheck.UNHEALTHY
    assert "metrics.prot" in reason
