"""Test-only mitmproxy addon: send upstream connections for some hosts to a local address.

    mitmdump -s redirect_addon.py --set redirect_map=api.openai.com=127.0.0.1:8443,other.test=127.0.0.1:8443

``redirect_map`` is a comma-separated list of ``HOST[:PORT]=IP:PORT``; an entry without a
port matches any port. It rewrites ``data.server.address`` in the public ``server_connect``
hook (approach A of the mitmproxy mechanics report), so the SNI and Host header sent
upstream stay the original host name, while inside the tunnel ``flow.request.host:port``
shows the redirected address (``flow.request.pretty_host`` keeps the name).

Each redirect is logged at info level ("redirect: api.openai.com:443 -> 127.0.0.1:8443").
"""

from __future__ import annotations

import logging

from mitmproxy import ctx, exceptions
from mitmproxy.proxy import server_hooks

log = logging.getLogger(__name__)


def parse_map(spec: str) -> dict[tuple[str, int | None], tuple[str, int]]:
    out: dict[tuple[str, int | None], tuple[str, int]] = {}
    for entry in (e.strip() for e in spec.split(",")):
        if not entry:
            continue
        src, sep, dst = entry.partition("=")
        if not sep:
            raise exceptions.OptionsError(f"redirect_map: bad entry {entry!r} (want HOST[:PORT]=IP:PORT)")
        host, _, port = src.strip().rpartition(":") if ":" in src else (src.strip(), "", "")
        dhost, _, dport = dst.strip().rpartition(":")
        if not dhost or not dport.isdigit() or (port and not port.isdigit()):
            raise exceptions.OptionsError(f"redirect_map: bad entry {entry!r} (want HOST[:PORT]=IP:PORT)")
        out[(host.lower(), int(port) if port else None)] = (dhost, int(dport))
    return out


class Redirect:
    def __init__(self) -> None:
        self.map: dict[tuple[str, int | None], tuple[str, int]] = {}

    def load(self, loader) -> None:  # noqa: ANN001
        loader.add_option("redirect_map", str, "",
                          "Comma-separated HOST[:PORT]=IP:PORT upstream redirects (tests only).")

    def configure(self, updated: set[str]) -> None:
        if "redirect_map" in updated:
            self.map = parse_map(ctx.options.redirect_map)

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        addr = data.server.address
        if not addr:
            return
        host, port = str(addr[0]).lower(), int(addr[1])
        dst = self.map.get((host, port)) or self.map.get((host, None))
        if dst:
            log.info("redirect: %s:%s -> %s:%s", host, port, dst[0], dst[1])
            data.server.address = dst


addons = [Redirect()]
