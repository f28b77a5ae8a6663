"""Container health probe of the EVC image (its Dockerfile's HEALTHCHECK).

The image runs any role, so the probe first reads which one from the command line of the
container's main process (``evc gateway run --config ...``), loads that config and asks the
daemon's Prometheus endpoint for ``/metrics``: an answer means the process is alive and serving.
A role without an endpoint (``metrics.port: null``, ``evc --help``, ``evc broker up``) has
nothing to probe and is reported healthy. Exit codes follow Docker: 0 healthy, 1 unhealthy.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from evc.config import CloudConfig, GatewayConfig, MetricsConfig, load_config
from evc.errors import ConfigError

HEALTHY = 0
UNHEALTHY = 1
TIMEOUT_SECONDS = 3.0
DAEMONS = {"gateway": GatewayConfig, "cloud": CloudConfig}
# A daemon listening on every address is reached on loopback from inside its own container.
WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104


def daemon_config(argv: Sequence[str]) -> tuple[str, Path] | None:
    """Return (role, config path) if ``argv`` runs a gateway or cloud daemon, else None."""
    args = list(argv)
    for index, word in enumerate(args[:-1]):
        if word in DAEMONS and args[index + 1] == "run":
            config = _option(args[index + 2 :], "--config", "-c")
            return None if config is None else (word, Path(config))
    return None


def _option(args: Sequence[str], *names: str) -> str | None:
    for index, word in enumerate(args):
        if word in names and index + 1 < len(args):
            return args[index + 1]
        for name in names:
            if word.startswith(f"{name}="):
                return word.split("=", 1)[1]
    return None


def metrics_url(metrics: MetricsConfig) -> str | None:
    """Return the URL of the /metrics endpoint ``metrics`` describes, None if it is disabled."""
    if not metrics.port:  # null disables it; 0 is a free port nobody can know in advance
        return None
    host = WILDCARDS.get(metrics.host, metrics.host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{metrics.port}/metrics"


def probe(argv: Sequence[str]) -> tuple[int, str]:
    """Return (exit code, reason) for the daemon that ``argv`` starts."""
    found = daemon_config(argv)
    if found is None:
        return HEALTHY, "no EVC daemon in the command line: nothing to probe"
    role, path = found
    try:
        config = load_config(path, DAEMONS[role])
    except ConfigError as exc:
        return UNHEALTHY, str(exc)
    url = metrics_url(config.metrics)
    if url is None:
        return HEALTHY, f"{role}: metrics.port is not set, nothing to probe"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:  # noqa: S310
            status = int(response.status)
    except (urllib.error.URLError, OSError) as exc:
        return UNHEALTHY, f"{role}: {url} does not answer: {exc}"
    if status != 200:
        return UNHEALTHY, f"{role}: {url} answered {status}"
    return HEALTHY, f"{role}: {url} answered 200"


def main_process_argv(proc: Path = Path("/proc/1/cmdline")) -> list[str]:
    """Return the command line of the container's main process."""
    return [part for part in proc.read_bytes().decode(errors="replace").split("\0") if part]


def main() -> int:
    """Probe the container's daemon and print why it is (un)healthy."""
    code, reason = probe(main_process_argv())
    print(reason)
    return code


if __name__ == "__main__":
    sys.exit(main())
