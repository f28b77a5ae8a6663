"""JSON Schema of each role's YAML config, generated from the pydantic models in :mod:`evc.config`.

Editors (the YAML language server, for one) and non-Python tools check a config against these
schemas before it reaches a fog box. The schemas are committed under ``configs/schema/`` and a
test keeps them equal to what the models generate; after changing a model, regenerate them with::

    python -m evc.config_schema configs/schema

A schema checks shapes, types, ranges and unknown keys. The rules that span several fields
(``model_validator``) and the gateway's pipeline operators are checked by ``--validate-config``
only, so a config that passes its schema may still be refused by the daemon.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from evc.config import CloudConfig, DeviceConfig, GatewayConfig

# The dialect pydantic generates; naming it lets validators and editors pick the right one.
DIALECT = "https://json-schema.org/draft/2020-12/schema"
SUFFIX = ".schema.json"
MODELS: dict[str, type[BaseModel]] = {
    "gateway": GatewayConfig,
    "cloud": CloudConfig,
    "device": DeviceConfig,
}


def schemas() -> dict[str, dict[str, Any]]:
    """Return the JSON Schema of every role's config, keyed by role (gateway, cloud, device)."""
    return {
        role: {"$schema": DIALECT, **model.model_json_schema()} for role, model in MODELS.items()
    }


def render(schema: dict[str, Any]) -> str:
    """Return ``schema`` as the text of its committed file (stable, so diffs stay small)."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def write_schemas(directory: str | Path) -> list[Path]:
    """Write ``<role>.schema.json`` for every role into ``directory`` (created if missing).

    Returns:
        The files written, in role order.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for role, schema in schemas().items():
        path = folder / f"{role}{SUFFIX}"
        path.write_text(render(schema), encoding="utf-8")
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Write the schemas into the folder named on the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m evc.config_schema",
        description="Write the JSON Schema of every EVC config (gateway, cloud, device).",
    )
    parser.add_argument("directory", type=Path, help="Output folder, e.g. configs/schema.")
    args = parser.parse_args(argv)
    for path in write_schemas(args.directory):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
