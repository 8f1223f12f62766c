"""``pouch_route``: send a provider host to another address, keeping its name for SNI and Host.

For OpenAI-compatible local servers and for the tests: ``--set
pouch_route=api.openai.com=127.0.0.1:9443`` (repeatable). Upstream certificates are still
verified as mitmproxy does (``ssl_verify_upstream_trusted_ca`` for a private CA).
"""

from __future__ import annotations

from collections.abc import Sequence

from mitmproxy import ctx, exceptions
from mitmproxy.proxy import server_hooks


def parse_route(spec: str) -> tuple[str, tuple[str, int]]:
    """``HOST=ADDR:PORT`` -> (host, (addr, port))."""
    host, sep, target = spec.partition("=")
    addr, colon, port = target.rpartition(":")
    if not sep or not host or not colon or not addr or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"pouch_route {spec!r}: expected HOST=ADDRESS:PORT, e.g. api.openai.com=127.0.0.1:9443")
    return host.strip().lower(), (addr.strip("[]"), int(port))


def parse_routes(specs: Sequence[str]) -> dict[str, tuple[str, int]]:
    return dict(parse_route(s) for s in specs)


class Route:
    def __init__(self) -> None:
        self.routes: dict[str, tuple[str, int]] = {}

    def load(self, loader) -> None:
        loader.add_option(
            name="pouch_route", typespec=Sequence[str], default=[],
            help="Send a provider host to another address while keeping its name for SNI and the "
                 "Host header: HOST=ADDRESS:PORT, e.g. api.openai.com=127.0.0.1:9443. Repeatable.",
        )

    def configure(self, updated: set[str]) -> None:
        if "pouch_route" in updated:
            try:
                self.routes = parse_routes(ctx.options.pouch_route)
            except ValueError as exc:
                raise exceptions.OptionsError(str(exc)) from None

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        addr = data.server.address
        if not addr or not self.routes:
            return
        target = self.routes.get(str(addr[0]).lower().rstrip("."))  # api.openai.com. is the same host
        if target is not None:
            data.server.address = target  # SNI and Host keep the provider's name
