"""Which traffic is pouch's: the LLM API hosts, and on them which calls are billed.

Every other host is tunnelled untouched: unless the user set ``allow_hosts``/``ignore_hosts``
themselves, pouch sets ``allow_hosts`` to its hosts so mitmproxy never opens their TLS.
A request is an LLM host's by where it will really go: the ``CONNECT`` target of its tunnel
(recorded in ``http_connect``, before ``pouch_route`` changes the address), else the client's
TLS SNI, else the host mitmproxy will dial. The same holds for what is decrypted: a tunnel whose
``CONNECT`` target is an LLM host is decrypted whatever its SNI says (``next_layer``; with
``pouch_route`` mitmproxy's own decision only sees the routed address and the SNI). A ``Host`` header or absolute-form authority that
names another host or port is answered 421 (``pouch_misdirected_request``): scoping by the
Host header would let ``Host: evil.example`` inside a tunnel to api.openai.com skip the gate.

On an LLM host, the rules of ``endpoints.py`` apply to every provider: upgrades (WebSocket),
method overrides, odd methods and bodies on non-POSTs to billed paths are refused outright.
Then the destination's provider module (``providers.for_host``: OpenAI, Anthropic, Gemini;
OpenAI's format for any other host in ``pouch_hosts``) classifies the call: billed endpoints go
on to the budget gate; requests known to be free (body-less reads, moderations, token counts)
pass; endpoints pouch cannot reserve for (batches, cached contents) are refused with the
reason; anything else is refused (fail closed) unless ``pouch_unknown_endpoints=pass``.
"""

from __future__ import annotations

import logging
import re
import weakref
from collections.abc import Sequence

from mitmproxy import connection, ctx, exceptions, http
from mitmproxy.net.tls import starts_like_tls_record
from mitmproxy.proxy import layer, layers
from mitmproxy.proxy.layers.http import HTTPMode

from ..endpoints import (
    STANDARD_METHODS, canonical_path, describe, folded, header_index, misdirected, refusal, split_authority,
)
from ..providers import DEFAULT_HOSTS, for_host, host_matches, local
from .local import LocalModels
from .replies import PROVIDER, reply

log = logging.getLogger(__name__)

SCOPE = "pouch_scope"  # flow.metadata key: "billed" | "free" | "passed"


def allow_hosts_pattern(hosts: Sequence[str]) -> str:
    """An anchored ``allow_hosts`` regex; unanchored would also match api.openai.com.evil.example.
    The optional trailing dot: ``CONNECT api.openai.com.:443`` is the same host, and a tunnel
    left undecrypted would reach it unbudgeted."""
    return "^(" + "|".join(r"[a-z0-9-]+\." + re.escape(h[2:]) if h.startswith("*.") else re.escape(h)
                           for h in hosts) + r")\.?:\d+$"


class Scope:
    def __init__(self, local: LocalModels | None = None) -> None:
        self.hosts: frozenset[str] = frozenset()
        self._max_body_mb = 32  # pouch_max_body_mb and pouch_unknown_endpoints, kept by ``configure``
        self._pass_unknown = False
        self.local = local  # which host:port pairs are local model servers (``pouch_local_hosts``)
        self._patterns: tuple[str, ...] = ()
        self._scoped = False  # pouch set allow_hosts itself (``pouch_tls_scope``)
        # client connection -> its CONNECT target, normalised (before any route rewrites it)
        self._tunnels: weakref.WeakKeyDictionary[connection.Client, tuple[str, int]] = weakref.WeakKeyDictionary()

    def load(self, loader) -> None:
        loader.add_option(
            name="pouch_hosts", typespec=Sequence[str], default=list(DEFAULT_HOSTS),
            help="LLM API hosts pouch decrypts and budgets: api.openai.com, api.anthropic.com and "
                 "generativelanguage.googleapis.com speak their own formats; the OpenAI-compatible hosts "
                 "(OpenRouter, DeepSeek, Groq, Mistral, xAI, Together, Fireworks, Perplexity) and Azure "
                 "(*.openai.azure.com, *.cognitiveservices.azure.com, *.services.ai.azure.com: `*.` is one DNS label) have their own price names; any other host "
                 "speaks OpenAI's format. Other hosts are tunnelled untouched.",
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
            bad = [h for h in hosts if not re.fullmatch(r"(\*\.)?[a-z0-9.-]+", h)]
            if not hosts or bad:
                raise exceptions.OptionsError(f"pouch_hosts: expected host names, got {list(ctx.options.pouch_hosts)!r}")
            self.hosts = frozenset(hosts)
            self._patterns = tuple(h for h in hosts if h.startswith("*."))  # e.g. *.openai.azure.com
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
        # read per request, so kept here: ``ctx.options.X`` deep-copies the default of an option left at it
        self._max_body_mb = ctx.options.pouch_max_body_mb
        self._pass_unknown = ctx.options.pouch_unknown_endpoints == "pass"

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
            local_tls = self.local.hosts.allow_patterns() if self.local is not None else []  # a local server with TLS
            ctx.options.update(allow_hosts=[allow_hosts_pattern(sorted(self.hosts)), *local_tls])
            self._scoped = True

    def is_llm_host(self, host: str) -> bool:
        """``host`` is in ``pouch_hosts``, by name or by a ``*.`` pattern."""
        return host in self.hosts or any(host_matches(p, host) for p in self._patterns)

    def http_connect(self, flow: http.HTTPFlow) -> None:
        target = split_authority(f"{flow.request.host}:{flow.request.port}", flow.request.port)
        if target is not None:
            self._tunnels[flow.client_conn] = target

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        """Decrypt a tunnel to an LLM host that mitmproxy's ``allow_hosts`` check would leave alone.

        mitmproxy decides on the server's address and the client's SNI. With ``pouch_route`` the
        address is already the routed one, so a client sending another SNI inside ``CONNECT
        api.openai.com:443`` would get a plain tunnel to the provider, past the gate. The tunnel's
        ``CONNECT`` target decides instead; the request is then refused 421 by :meth:`request`
        (its SNI disagrees with the tunnel). Only where pouch set ``allow_hosts`` itself: a user's
        own ``allow_hosts``/``ignore_hosts`` is theirs to keep.

        Script addons run before mitmproxy's ``NextLayer``, which leaves a layer another addon set
        alone: for such a tunnel its decision is asked for here, then overridden if it is a
        passthrough."""
        if not self._scoped or nextlayer.layer is not None:
            return
        target = self._tunnels.get(nextlayer.context.client)
        if target is None or not (self.is_llm_host(target[0]) or (self.local is not None and self.local.match(*target))):
            return
        decide = ctx.master.addons.get("nextlayer")
        if decide is None:
            return
        decide.next_layer(nextlayer)
        if not isinstance(nextlayer.layer, layers.TCPLayer):
            return  # decrypted already, or more data is needed first
        context = nextlayer.context
        if starts_like_tls_record(nextlayer.data_client()):
            server_tls = layers.ServerTLSLayer(context)  # what mitmproxy stacks for a decrypted tunnel
            server_tls.child_layer = layers.ClientTLSLayer(context)
            nextlayer.layer = server_tls
        else:  # plain text inside the tunnel: read as HTTP (scope refuses what is not the host's)
            nextlayer.layer = layers.HttpLayer(context, HTTPMode.transparent)

    def destination(self, flow: http.HTTPFlow) -> tuple[str, int]:
        """Where the request will really go (host name, port), whatever its Host header says."""
        tunnel = self._tunnels.get(flow.client_conn)
        if tunnel is not None:
            return tunnel
        port = flow.request.port
        if flow.client_conn.sni:  # transparent / local modes: the address is an IP, the SNI names it
            return flow.client_conn.sni.lower().rstrip("."), port
        return str(flow.request.host).lower().rstrip("."), port

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        req = flow.request
        data = req.data
        dest = self.destination(flow)
        default_port = 443 if data.scheme == b"https" else 80
        # the headers read in one pass (each ``headers.get`` scans and lower-cases every field)
        headers = header_index(data.headers.fields)
        found, special = headers.values, headers.special
        host_header = folded(found.get(b"host"))  # ``req.host_header``, without a second scan
        authority = req.authority if data.authority else ""  # (its IDNA decode of b"" is "", through the codec)
        if data.http_version in (b"HTTP/2.0", b"HTTP/3"):
            host_header = authority or host_header
        claims = [c for c in (host_header, authority) if c]
        sni = (flow.client_conn.sni or "").lower().rstrip(".")
        is_local = self.local is not None and self.local.match(*dest)
        ours = (is_local or self.is_llm_host(dest[0]) or self.is_llm_host(sni)
                or any(self.is_llm_host((split_authority(c, default_port) or ("",))[0]) for c in claims))
        if not ours:
            return
        provider = local if is_local else for_host(dest[0])
        flow.metadata[PROVIDER] = provider.NAME  # pouch's own answers take the provider's error shape
        wrong = misdirected(dest, claims, default_port)
        if wrong is None and sni and sni != dest[0]:  # e.g. CONNECT to an LLM host's IP with its name as SNI
            wrong = f"{sni} (TLS SNI)"
        if wrong is not None or (not self.is_llm_host(dest[0]) and not is_local):
            reply(flow, 421, f"pouch: this connection goes to {describe(dest)} but the request names {wrong!r}; "
                  f"pouch budgets a request by where it is really sent, so a Host that disagrees with it is "
                  f"refused (421 Misdirected Request). The request was not sent.", code="pouch_misdirected_request")
            return
        if provider.NAME == "gemini" and "key" in req.query:
            # Google takes the key as ?key= or x-goog-api-key: move it to the header at once, so no
            # key (virtual or real) is ever part of a URL a log prints
            key = req.query.get("key", "")
            del req.query["key"]
            req.headers.setdefault("x-goog-api-key", key)
        raw = data.content
        has_body = bool(raw) or b"transfer-encoding" in found
        method, path = req.method, req.path
        # refusal() can only refuse on a header the scan flagged, an odd method, a query string
        # (``?_method=``) or a body on a non-POST: none of these (the common case) needs the call
        if special or method not in STANDARD_METHODS or "?" in path or (has_body and method != "POST"):
            refused = refusal(method, path, list(req.headers.items(multi=True)) if special else [], has_body=has_body)
            if refused is not None:
                reply(flow, refused.status, refused.message, code=refused.code)
                return
        kind = provider.classify(method, path, has_body=has_body)
        if kind == "refused":
            reply(flow, 403, provider.refusal(req.method, req.path), code="pouch_unpriceable_endpoint")
            return
        if kind == "unknown":
            if self._pass_unknown:
                flow.metadata[SCOPE] = "passed"
                log.warning(f"pouch: passing unbudgeted {req.method} {req.path}")
                return
            reply(flow, 403,
                  f"pouch: {req.method} {canonical_path(req.path)} is not an endpoint pouch can price or knows to be "
                  "free, so it was not sent (fail closed). Set pouch_unknown_endpoints=pass to forward such calls "
                  "unbudgeted.", code="pouch_unknown_endpoint")
            return
        if kind == "billed":
            limit = self._max_body_mb * 1024 * 1024
            if raw is not None and len(raw) > limit:
                reply(flow, 413, f"pouch: request body of {len(raw):,} bytes exceeds pouch_max_body_mb "
                      f"({self._max_body_mb} MiB); nothing was sent", code="pouch_body_too_large")
                return
        flow.metadata[SCOPE] = kind
