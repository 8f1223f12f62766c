"""Which traffic is pouch's: the LLM API hosts, and on them which calls are billed.

Every other host is tunnelled untouched: unless the user set ``allow_hosts``/``ignore_hosts``
themselves, pouch sets ``allow_hosts`` to its hosts so mitmproxy never opens their TLS.
On an LLM host, billed endpoints go on to the budget gate, free calls (GET, moderations,
input-token counts) pass, and any other POST is refused (fail closed) unless
``pouch_unknown_endpoints=pass``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

from mitmproxy import ctx, exceptions, http

from ..plan import classify
from .replies import reply

log = logging.getLogger(__name__)

SCOPE = "pouch_scope"  # flow.metadata key: "billed" | "free" | "passed"


def allow_hosts_pattern(hosts: Sequence[str]) -> str:
    """An anchored ``allow_hosts`` regex; unanchored would also match api.openai.com.evil.example."""
    return "^(" + "|".join(re.escape(h) for h in hosts) + r"):\d+$"


class Scope:
    def __init__(self) -> None:
        self.hosts: frozenset[str] = frozenset()

    def load(self, loader) -> None:
        loader.add_option(
            name="pouch_hosts", typespec=Sequence[str], default=["api.openai.com"],
            help="LLM API hosts pouch decrypts and budgets (OpenAI's wire format). Other hosts "
                 "are tunnelled untouched.",
        )
        loader.add_option(
            name="pouch_unknown_endpoints", typespec=str, default="block", choices=("block", "pass"),
            help="What to do with a POST to an LLM host that pouch cannot price (e.g. /v1/batches): "
                 "block (answer 403, fail closed) or pass (forward unbudgeted).",
        )
        loader.add_option(
            name="pouch_max_body_mb", typespec=int, default=32,
            help="Largest request body (decoded, MiB) pouch will read; larger ones are refused.",
        )
        loader.add_option(
            name="pouch_tls_scope", typespec=bool, default=True,
            help="Set allow_hosts to pouch_hosts when neither allow_hosts nor ignore_hosts is set, "
                 "so only the LLM hosts are decrypted.",
        )

    def configure(self, updated: set[str]) -> None:
        if "pouch_hosts" in updated:
            hosts = [h.strip().lower() for h in ctx.options.pouch_hosts if h.strip()]
            bad = [h for h in hosts if not re.fullmatch(r"[a-z0-9.-]+", h)]
            if not hosts or bad:
                raise exceptions.OptionsError(f"pouch_hosts: expected host names, got {list(ctx.options.pouch_hosts)!r}")
            self.hosts = frozenset(hosts)
        if "pouch_unknown_endpoints" in updated and ctx.options.pouch_unknown_endpoints not in ("block", "pass"):
            # mitmproxy shows `choices` in --options but never enforces them
            raise exceptions.OptionsError(
                f"pouch_unknown_endpoints: expected block or pass, got {ctx.options.pouch_unknown_endpoints!r}")
        if "stream_large_bodies" in updated and ctx.options.stream_large_bodies:
            # mitmproxy sends a streamed request body upstream before the ``request`` hook runs,
            # so such a call would leave before pouch could price it (fail open): refuse instead
            raise exceptions.OptionsError(
                "stream_large_bodies cannot be used with pouch: mitmproxy would send large request bodies "
                "upstream before pouch can read and price them. Unset it; pouch_max_body_mb bounds request "
                "bodies, and pouch streams SSE responses by itself.")
        if "pouch_max_body_mb" in updated and ctx.options.pouch_max_body_mb < 1:
            raise exceptions.OptionsError("pouch_max_body_mb must be at least 1")

    def running(self) -> None:
        # every addon is loaded by now, so an option still unclaimed is misspelt: with pouch that is
        # an error (mitmproxy alone only warns), as a setting the user believes in is not applied
        unknown = sorted(ctx.options.deferred)
        if unknown:
            pouch = [k for k in unknown if k.startswith("pouch")]
            if pouch:
                log.error(f"unknown pouch option(s): {pouch}; `pouch options` lists pouch's options")
            if len(pouch) < len(unknown):
                log.error(f"unknown mitmproxy option(s): {[k for k in unknown if k not in pouch]}; "
                          "`mitmdump --options` lists mitmproxy's options")
            return
        if ctx.options.http2:
            log.warning("pouch: http2 is on; cutting one HTTP/2 stream off closes the shared upstream "
                        "connection and can reset other streams on it. `pouch proxy` sets http2=false.")
        if ctx.options.pouch_tls_scope and not ctx.options.allow_hosts and not ctx.options.ignore_hosts:
            ctx.options.update(allow_hosts=[allow_hosts_pattern(sorted(self.hosts))])

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or flow.request.pretty_host.lower() not in self.hosts:
            return
        kind = classify(flow.request.method, flow.request.path)
        if kind == "unknown":
            if ctx.options.pouch_unknown_endpoints == "pass":
                flow.metadata[SCOPE] = "passed"
                log.warning(f"pouch: passing unbudgeted {flow.request.method} {flow.request.path}")
                return
            reply(flow, 403,
                  f"pouch: {flow.request.method} {flow.request.path} is not an endpoint pouch can price, so it "
                  "was not sent (fail closed). Set pouch_unknown_endpoints=pass to forward such calls unbudgeted.",
                  code="pouch_unknown_endpoint")
            return
        if kind == "billed":
            limit = ctx.options.pouch_max_body_mb * 1024 * 1024
            raw = flow.request.raw_content
            if raw is not None and len(raw) > limit:
                reply(flow, 413, f"pouch: request body of {len(raw):,} bytes exceeds pouch_max_body_mb "
                      f"({ctx.options.pouch_max_body_mb} MiB); nothing was sent", code="pouch_body_too_large")
                return
        flow.metadata[SCOPE] = kind
