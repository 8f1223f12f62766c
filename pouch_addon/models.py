"""``pouch models``: what each reachable local model server offers, and the priced models of each
hosted provider (from the price table, the only models pouch lets through there).

Local servers are asked directly (never through a proxy), each on its list endpoint: Ollama's
``GET /api/tags``, then the OpenAI-compatible ``GET /v1/models`` (llama.cpp server, LM Studio,
vLLM, Ollama too), with a short timeout; a server that does not answer is reported as such.
``parse_listing`` and ``hosted`` are pure; ``probe`` does the I/O.
"""

from __future__ import annotations

import argparse
import json
import urllib.request
from collections.abc import Iterable
from typing import Any

from .money import format_usd
from .pricing import PriceTable
from .providers.local import KNOWN_PORTS, LocalHosts

#: the list endpoints asked, in order
LIST_PATHS = ("/api/tags", "/v1/models")


def parse_listing(path: str, body: Any) -> list[str] | None:
    """Model names of a list response (Ollama's ``models[].name``, OpenAI's ``data[].id``), or None."""
    if not isinstance(body, dict):
        return None
    items = body.get("models") if path == "/api/tags" else body.get("data")
    if not isinstance(items, list):
        return None
    key = "name" if path == "/api/tags" else "id"
    return [str(m[key]) for m in items if isinstance(m, dict) and isinstance(m.get(key), str)]


def probe(host: str, port: int, timeout: float = 0.5) -> dict[str, Any]:
    """Ask one server for its models: ``{"server", "reachable", "endpoint", "models"}``."""
    url_host = f"[{host}]" if ":" in host else host
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the server itself, not via a proxy
    reachable = False
    for path in LIST_PATHS:
        try:
            with opener.open(f"http://{url_host}:{port}{path}", timeout=timeout) as resp:
                reachable = True
                names = parse_listing(path, json.loads(resp.read(4 << 20) or b"null"))
        except OSError as exc:  # refused, timeout, HTTP error
            reachable = reachable or getattr(exc, "code", None) is not None
            continue
        except ValueError:
            continue
        if names is not None:
            return {"server": f"{url_host}:{port}", "reachable": True, "endpoint": path, "models": names}
    return {"server": f"{url_host}:{port}", "reachable": reachable, "endpoint": None, "models": []}


def local_targets(extra: Iterable[str]) -> list[tuple[str, int]]:
    """127.0.0.1 on the known ports (localhost and ::1 are the same servers), plus ``--local`` entries."""
    out = [("127.0.0.1", p) for p in KNOWN_PORTS]
    for h, p in LocalHosts.parse(extra).entries():
        if p is not None and (h, p) not in out:
            out.append((h, p))
    return out


def hosted(table: PriceTable, provider: str | None = None) -> dict[str, list[dict[str, str]]]:
    """Priced models by provider: name, mode and USD per 1M input / output tokens."""
    out: dict[str, list[dict[str, str]]] = {}
    for price in sorted(table._models.values(), key=lambda p: (p.provider, p.name)):  # every model of the table
        if provider is not None and price.provider != provider:
            continue
        out.setdefault(price.provider, []).append({
            "model": price.name, "mode": price.mode,
            "input_per_1m": format_usd(price.rates.input), "output_per_1m": format_usd(price.rates.output)})
    return out


def cmd_models(args: argparse.Namespace) -> None:
    from .cli import CliError

    try:
        targets = local_targets(args.local or [])
    except ValueError as exc:
        raise CliError(f"--local: {exc}") from None
    local = [probe(h, p, args.timeout) for h, p in targets] if not args.hosted_only else []
    priced = hosted(PriceTable.load(args.prices), args.provider) if not args.local_only else {}
    if args.json:
        print(json.dumps({"local": local, "hosted": priced}, indent=1))
        return
    if not args.hosted_only:
        print("local model servers ($0, metered):")
        for s in local:
            if s["models"]:
                print(f"  {s['server']} ({s['endpoint']}): {', '.join(s['models'])}")
            else:
                print(f"  {s['server']}: {'answers, lists no models' if s['reachable'] else 'not running'}")
    for prov, models in priced.items():
        print(f"{prov} ({len(models)} priced models; USD per 1M tokens in / out):")
        for m in models:
            print(f"  {m['model']}  {m['input_per_1m']} / {m['output_per_1m']}  ({m['mode']})")


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("models", parents=[common],
                       help="models of the reachable local servers and the priced models of each provider")
    p.add_argument("--local", action="append", metavar="HOST:PORT", help="another local server to ask (repeatable)")
    p.add_argument("--provider", help="only this hosted provider's models (openai, anthropic, gemini, ...)")
    p.add_argument("--local-only", action="store_true", help="only the local servers")
    p.add_argument("--hosted-only", action="store_true", help="only the price table")
    p.add_argument("--timeout", type=float, default=0.5, help="seconds to wait for each local server (default 0.5)")
    p.add_argument("--prices", help="another price table (like pouch_prices)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)
