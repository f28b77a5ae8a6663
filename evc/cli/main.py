"""The ``evc`` command line: thin wiring over the library.

Exit codes: 0 success, 1 failure at run time, 2 bad usage or invalid configuration.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from evc import __version__
from evc.cli import dataset, model, status
from evc.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    Handler,
    command,
    group,
    print_result,
)
from evc.config import CloudConfig, DeviceConfig, GatewayConfig, load_config
from evc.errors import ConfigError, EvcError
from evc.mqtt.command import Reply
from evc.service import Service
from evc.wire import Kind


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``evc`` command line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"evc: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except EvcError as exc:
        print(f"evc: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE
    except BrokenPipeError:
        # The reader went away (`evc status --json | head`): not an error of ours. Point stdout
        # at nothing so that Python's exit flush does not complain again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree (also used by the docs tests)."""
    parser = argparse.ArgumentParser(
        prog="evc", description="EVC: edge / fog / cloud messaging for vision at the edge."
    )
    parser.add_argument("--version", action="version", version=f"evc {__version__}")
    groups = parser.add_subparsers(title="commands", metavar="COMMAND")

    gateway = group(groups, "gateway", "Run the fog gateway daemon.")
    run = command(gateway, "run", "Run a gateway until SIGINT/SIGTERM.", _gateway_run)
    _config_options(run)
    _configure_options(gateway)

    cloud = group(groups, "cloud", "Run and inspect cloud ingest.")
    run = command(cloud, "run", "Run a cloud ingest worker until SIGINT/SIGTERM.", _cloud_run)
    _config_options(run)
    stats = command(cloud, "stats", "Print what the cloud store holds.", _cloud_stats)
    _config_options(stats, validate=False)
    stats.add_argument("--json", action="store_true", help="Print JSON for scripts.")

    device = group(groups, "device", "Run device nodes.")
    sim = command(device, "simulate", "Run simulated cameras publishing detections.", _simulate)
    _config_options(sim)
    sim.add_argument("--devices", type=int, help="Override simulate.devices.")
    sim.add_argument("--fps", type=float, help="Override simulate.fps (per camera).")
    sim.add_argument("--duration", type=float, help="Override simulate.duration_s.")
    sim.add_argument("--json", action="store_true", help="Print the result as JSON.")

    configure = command(
        device, "configure", "Push settings to a device (through its gateway) and wait for "
        "its reply.", _device_configure,
    )
    configure.add_argument("--cloud", required=True, help="Cloud broker URL (mqtt://host:port).")
    configure.add_argument("--site", required=True, help="The device's site.")
    configure.add_argument("--device", required=True, help="The device id.")
    configure.add_argument(
        "--settings", type=Path, required=True,
        help="YAML file with any of publish:, heartbeat_interval_s:, sampling:.",
    )
    configure.add_argument(
        "--version", type=int, required=True, dest="config_version", metavar="N",
        help="Settings version; must exceed the device's active one to be applied.",
    )
    configure.add_argument("--timeout", type=float, default=10.0, help="Seconds (default 10).")
    configure.add_argument("--json", action="store_true", help="Print the reply as JSON.")

    model.add_commands(groups)
    dataset.add_commands(groups)
    status.add_commands(groups)

    broker = group(groups, "broker", "Local Mosquitto brokers for development.")
    up = command(broker, "up", "Start a fog and a cloud broker until Ctrl-C.", _broker_up)
    up.add_argument("--json", action="store_true", help="Print the URLs as JSON.")

    demo = command(groups, "demo", "Run the whole hierarchy locally and summarise.", _demo)
    demo.add_argument(
        "--devices", type=_positive(int), default=4, help="Simulated cameras (default 4)."
    )
    demo.add_argument(
        "--fps", type=_positive(float), default=20.0, help="Frames/s per camera (default 20)."
    )
    demo.add_argument(
        "--duration", type=_positive(float), default=15.0, help="Seconds (default 15)."
    )
    demo.add_argument(
        "--no-loop", action="store_true",
        help="Skip the learning loop (scene shift, hard examples, v2 training and rollout).",
    )
    demo.add_argument(
        "--train-budget", type=_positive(float), default=60.0, metavar="SECONDS",
        help="Training time budget of the learning loop (default 60).",
    )
    demo.add_argument("--json", action="store_true", help="Print the summary as JSON.")

    bench = command(groups, "bench", "Measure EVC beside its baselines.", _bench)
    bench.add_argument("--quick", action="store_true", help="Short runs, for CI.")
    bench.add_argument(
        "--only", action="append", metavar="SECTION",
        help="Run only this section (repeatable), e.g. models or learning.",
    )
    bench.add_argument("--json", action="store_true", help="Print the results as JSON.")
    bench.add_argument(
        "--output", type=Path, help="Write a Markdown report here (e.g. docs/BENCHMARKS.md)."
    )
    return parser


def _positive(kind: Callable[[str], float]) -> Callable[[str], Any]:
    """An argparse type: a number above zero (else a usage error, exit 2)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from exc
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
        return value

    return parse


def _config_options(parser: argparse.ArgumentParser, *, validate: bool = True) -> None:
    parser.add_argument("--config", "-c", type=Path, required=True, help="YAML config file.")
    if validate:
        parser.add_argument(
            "--validate-config",
            action="store_true",
            help="Validate the config, print the result and exit (2 if invalid).",
        )


def _configure_options(gateway: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    configure = command(
        gateway, "configure", "Push a pipeline to a running gateway and wait for its reply.",
        _gateway_configure,
    )
    configure.add_argument("--cloud", required=True, help="Cloud broker URL (mqtt://host:port).")
    configure.add_argument("--site", required=True, help="The gateway's site.")
    configure.add_argument("--gateway", required=True, help="The gateway id.")
    configure.add_argument(
        "--pipeline", type=Path, required=True,
        help="YAML file: a list of operators, or a mapping with a pipeline: key.",
    )
    configure.add_argument(
        "--version", type=int, required=True, dest="config_version", metavar="N",
        help="Config version; must exceed the gateway's active one to be applied.",
    )
    configure.add_argument("--timeout", type=float, default=10.0, help="Seconds (default 10).")
    configure.add_argument("--json", action="store_true", help="Print the reply as JSON.")


# -- handlers ----------------------------------------------------------------------------------


def _validated(args: argparse.Namespace, model: type[BaseModel]) -> BaseModel | None:
    config = load_config(args.config, model)
    if getattr(args, "validate_config", False):
        print(f"{args.config}: valid {model.__name__}")
        return None
    return config


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    return stop


def _gateway_run(args: argparse.Namespace) -> int:
    from evc.gateway import Gateway

    return _run_daemon(args, GatewayConfig, Gateway)


def _gateway_configure(args: argparse.Namespace) -> int:
    from evc.gateway.commands import push_pipeline
    from evc.mqtt.client import BrokerAddress
    from evc.wire.topics import validate_name

    try:
        validate_name(args.site, what="site")
        validate_name(args.gateway, what="gateway id")
    except EvcError as exc:
        raise ConfigError(str(exc)) from exc
    reply = push_pipeline(
        address=BrokerAddress.from_url(args.cloud), site=args.site, gateway=args.gateway,
        version=args.config_version, pipeline=_read_pipeline(args.pipeline),
        timeout_s=args.timeout,
    )
    return _print_reply(reply, f"gateway {args.site}/{args.gateway}", as_json=args.json)


def _print_reply(reply: Reply, target: str, *, as_json: bool) -> int:
    """Print a command's reply; exit 0 if it was applied, 1 if not."""
    if as_json:
        print_result(asdict(reply), as_json=True)
    else:
        print(f"{target}: version {reply.version} {reply.result} "
              f"(active version {reply.active_version})", flush=True)
        for error in reply.errors:
            print(f"  {error.path or '(top level)'}: {error.message}", flush=True)
    return EXIT_OK if reply.applied else EXIT_FAILURE


def _read_pipeline(path: Path) -> list[Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read the pipeline {path}: {exc}", path=str(path)) from exc
    if isinstance(data, dict):
        data = data.get("pipeline")
    if not isinstance(data, list):
        raise ConfigError(f"{path}: expected a list of operators or a pipeline: key")
    return data


def _cloud_run(args: argparse.Namespace) -> int:
    from evc.cloud import CloudIngest

    return _run_daemon(args, CloudConfig, CloudIngest)


def _run_daemon(
    args: argparse.Namespace,
    model: type[GatewayConfig | CloudConfig],
    daemon: Callable[[Any], Service],
) -> int:
    config = _validated(args, model)
    if not isinstance(config, model):
        return EXIT_OK
    _setup_logging(config.log_level)
    daemon(config).run_until(_stop_on_signals())
    return EXIT_OK


def _cloud_stats(args: argparse.Namespace) -> int:
    from evc.cloud import SqliteRecordStore

    config = load_config(args.config, CloudConfig)
    if not config.store.path.exists():
        raise EvcError(f"no record store at {config.store.path}")
    store = SqliteRecordStore(config.store.path)
    stats = store.stats()
    store.close()
    summary = asdict(stats)
    summary["by_kind"] = {Kind(kind).name.lower(): count for kind, count in stats.by_kind.items()}
    print_result(summary, as_json=args.json)
    return EXIT_OK


def _simulate(args: argparse.Namespace) -> int:
    from evc.device.simulate import simulate

    config = _validated(args, DeviceConfig)
    if not isinstance(config, DeviceConfig):
        return EXIT_OK
    overrides = {
        key: value
        for key, value in (
            ("devices", args.devices), ("fps", args.fps), ("duration_s", args.duration)
        )
        if value is not None
    }
    if overrides:
        merged = config.simulate.model_dump() | overrides
        config = config.model_copy(update={"simulate": type(config.simulate)(**merged)})
    _setup_logging("WARNING")
    result = simulate(config, stop=_stop_on_signals())
    summary: dict[str, Any] = {
        "devices": result.devices, "frames": result.frames, "published": result.published,
        "suppressed": result.suppressed, "detections": result.detections,
        "seconds": round(result.seconds, 3), "unsent": result.unsent,
        "bytes_sent": result.bytes_sent,
    }
    if result.latencies_ms:
        summary["inference_ms_p50"] = round(result.latency_ms(50) or 0.0, 3)
        summary["inference_ms_p99"] = round(result.latency_ms(99) or 0.0, 3)
    print_result(summary, as_json=args.json)
    return EXIT_OK if result.unsent == 0 else EXIT_FAILURE


def _device_configure(args: argparse.Namespace) -> int:
    import yaml

    from evc.device.commands import push_device_settings
    from evc.mqtt.client import BrokerAddress

    settings = yaml.safe_load(args.settings.read_text(encoding="utf-8")) or {}
    if not isinstance(settings, dict):
        print(f"evc: {args.settings} must hold a mapping of settings", file=sys.stderr)
        return EXIT_USAGE
    reply = push_device_settings(
        address=BrokerAddress.from_url(args.cloud), site=args.site, device=args.device,
        version=args.config_version, settings=settings, timeout_s=args.timeout,
    )
    return _print_reply(reply, f"device {args.site}/{args.device}", as_json=args.json)


def _broker_up(args: argparse.Namespace) -> int:
    from evc.harness import MosquittoBroker

    stop = _stop_on_signals()
    with MosquittoBroker(tier="fog") as fog, MosquittoBroker(tier="cloud") as cloud:
        print_result({"fog": fog.url, "cloud": cloud.url}, as_json=args.json)
        if not args.json:
            print("Ctrl-C stops both brokers.", flush=True)
        stop.wait()
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    from evc.demo import run_demo
    from evc.learning_demo import LoopSettings

    return run_demo(
        devices=args.devices, fps=args.fps, duration_s=args.duration, as_json=args.json,
        stop=_stop_on_signals(),
        loop=None if args.no_loop else LoopSettings(budget_s=args.train_budget),
    )


def _bench(args: argparse.Namespace) -> int:
    from evc.bench import run_bench

    return run_bench(quick=args.quick, as_json=args.json, output=args.output, only=args.only)


if __name__ == "__main__":
    sys.exit(main())
