"""Azure OpenAI deployments and the models they run: ``azure.json`` in the pouch home, and ``pouch azure``.

A deployment is a name the customer chose; pouch must know its model before the call to reserve
for it (``providers/azure.py``). ``pouch azure map DEPLOYMENT MODEL`` records it (the model must
have an Azure price in the table), ``unmap`` forgets it, ``list`` shows the map. Each change is
audited. The proxy re-reads the file when it changes (``addons/azure_map.py``).

File: ``{"deployments": {"<deployment, lower case>": "<model>"}}``, 0600, replaced atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path
from typing import Any

FILE = "azure.json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class AzureMapError(ValueError):
    """A map file that cannot be read, or a mapping that cannot be made."""


def load(home: Path) -> dict[str, str]:
    """The deployment -> model map of ``home`` ({} when there is no file)."""
    path = Path(home) / FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise AzureMapError(f"{path}: cannot read the Azure deployment map ({exc})") from None
    deps = data.get("deployments") if isinstance(data, dict) else None
    if not isinstance(deps, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in deps.items()):
        raise AzureMapError(f"{path}: not an Azure deployment map (expected {{\"deployments\": {{name: model}}}})")
    return {k.lower(): v for k, v in deps.items()}


def save(home: Path, mapping: dict[str, str]) -> Path:
    path = Path(home) / FILE
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump({"deployments": dict(sorted(mapping.items()))}, fh, indent=1)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def check_mapping(deployment: str, model: str, table: Any) -> str:
    """The model name to store for ``deployment`` (raises AzureMapError when it has no Azure price)."""
    from .pricing import UnknownModel

    if not _NAME.fullmatch(deployment):
        raise AzureMapError(f"{deployment!r} is not an Azure deployment name (letters, digits, '.', '_', '-')")
    model = model.strip()
    try:
        price = table.resolve("azure/" + model)
    except UnknownModel:
        raise AzureMapError(f"{model!r} has no Azure OpenAI price in the table ({table.path}); give the model the "
                            "deployment runs as Azure names it, e.g. gpt-4o-2024-08-06 or gpt-4o-mini") from None
    if price.provider != "azure":
        raise AzureMapError(f"{model!r} is not an Azure OpenAI model in the price table")
    return model


def cmd_azure(args: argparse.Namespace) -> None:
    from .admin import AdminError, audit
    from .home import resolve_home
    from .pricing import PriceTable

    home = resolve_home(args.home)
    try:
        mapping = load(home)
        if args.action == "map":
            model = check_mapping(args.deployment, args.model, PriceTable.load(args.prices))
            mapping[args.deployment.lower()] = model
            home.mkdir(mode=0o700, parents=True, exist_ok=True)
            path = save(home, mapping)
            audit(home, "azure.map", {"deployment": args.deployment.lower(), "model": model})
            print(f"Azure deployment {args.deployment} runs {model} (priced as azure/{model}); saved in {path}")
        elif args.action == "unmap":
            if mapping.pop(args.deployment.lower(), None) is None:
                raise AdminError(f"no Azure deployment {args.deployment!r} is mapped (`pouch azure list`)")
            save(home, mapping)
            audit(home, "azure.unmap", {"deployment": args.deployment.lower()})
            print(f"Azure deployment {args.deployment} unmapped: its calls are refused until it is mapped again")
        elif args.json:
            print(json.dumps(mapping, indent=1, sort_keys=True))
        elif not mapping:
            print("no Azure deployments mapped (`pouch azure map DEPLOYMENT MODEL`)")
        else:
            for dep, model in sorted(mapping.items()):
                print(f"{dep}  ->  {model}")
    except AzureMapError as exc:
        raise AdminError(str(exc)) from None


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("azure", parents=[common], help="Azure OpenAI: which model each deployment runs")
    asub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    mp = asub.add_parser("map", parents=[common], help="record the model a deployment runs (needed to reserve)")
    mp.add_argument("deployment")
    mp.add_argument("model", help="as Azure names it, e.g. gpt-4o-2024-08-06")
    mp.add_argument("--prices", default=None, help="a price table other than the packaged one")
    up = asub.add_parser("unmap", parents=[common], help="forget a deployment's model")
    up.add_argument("deployment")
    lp = asub.add_parser("list", parents=[common], help="the mapped deployments")
    lp.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_azure)
