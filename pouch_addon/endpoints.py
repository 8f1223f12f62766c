"""Which requests to an LLM host are billed, known to be free, unknown, or refused outright.

Pure rules for ``addons/scope.py``. A request passes unpriced only when it is *known* to be
free: a read (``GET``/``HEAD``) without a body of a documented resource, a CORS ``OPTIONS``, or
a ``POST`` to an endpoint that costs nothing. Some requests are refused whatever
``pouch_unknown_endpoints`` says, because once sent they could cost money pouch cannot meter:

- a protocol upgrade (``Upgrade`` / ``Connection: upgrade``): after a ``101`` the connection
  carries WebSocket frames (the Realtime API), which pouch does not price;
- a method override (``X-HTTP-Method-Override`` and kin, ``?_method=``): some servers act on it,
  so a "free" ``GET`` could be served as a billed ``POST``;
- a method outside the standard set (``TRACE``, ``CONNECT`` inside the tunnel, ``post``);
- a body on anything but a ``POST`` to a billed endpoint.

Paths are compared in a canonical form (percent-decoded, dot segments resolved, empty
segments, ``;params`` and the trailing slash dropped, lower case), so ``/v1//chat/completions/``
or ``/v1/chat%2Fcompletions`` is billed like ``/v1/chat/completions``, never passed as free.

Where a request goes is decided by the connection (the ``CONNECT`` target, else the TLS SNI,
else the address mitmproxy will dial), not by its ``Host`` header: :func:`misdirected` names a
``Host`` or absolute-form authority that disagrees with it (answered 421).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote

# billed endpoints (canonical path) -> api kind
BILLED = {
    "/v1/chat/completions": "chat",
    "/v1/responses": "responses",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
}
# POSTs that cost nothing
FREE_POSTS = ("/v1/moderations", "/v1/responses/input_tokens")
#: reads (GET/HEAD without a body) of these resources cost nothing: listing and retrieving
#: models, stored responses and completions, conversations, files, batches, fine-tuning jobs,
#: vector stores, assistants and threads, containers, evals, the organisation's usage.
#: Not here, so refused unless ``pouch_unknown_endpoints=pass``: ``/v1/realtime`` (a WebSocket
#: session, billed per response) and anything else.
FREE_READS = re.compile(
    r"/v1/(models|responses|chat/completions|conversations|files|uploads|batches|fine_tuning|vector_stores"
    r"|assistants|threads|containers|evals|organization)(/[^/]+)*")
STANDARD_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"})
OVERRIDE_HEADERS = ("x-http-method-override", "x-http-method", "x-method-override")


@dataclass(frozen=True)
class Refused:
    """A request pouch answers itself whatever ``pouch_unknown_endpoints`` says."""

    status: int
    code: str
    message: str


@lru_cache(maxsize=1024)
def canonical_path(target: str) -> str:
    """The path a lenient server could route ``target`` to, for comparison only (never sent).
    Memoised: each request asks it for the same path several times (scope, gate, plan)."""
    path = target.split("?", 1)[0].split("#", 1)[0]
    if "://" in path:  # absolute-form
        path = "/" + path.split("://", 1)[1].partition("/")[2]
    for _ in range(3):  # double encoding (%252F) decodes again on some stacks
        decoded = unquote(path)
        if decoded == path:
            break
        path = decoded
    out: list[str] = []
    for seg in path.replace("\\", "/").split("/"):
        seg = seg.split(";", 1)[0].strip()
        if seg in ("", "."):
            continue
        if seg == "..":
            if out:
                out.pop()
            continue
        out.append(seg)
    return ("/" + "/".join(out)).lower()


def query_params(target: str) -> list[str]:
    """The parameter names of ``target``'s query string, decoded and lower-case."""
    _, sep, query = target.partition("?")
    if not sep:
        return []
    return [unquote(p.split("=", 1)[0]).strip().lower() for p in query.split("#", 1)[0].split("&") if p]


def classify(method: str, target: str, *, has_body: bool = False) -> str:
    """``billed`` / ``free`` / ``unknown`` for a request to an LLM host (query string ignored).

    Free only when known to be: a body-less GET/HEAD of a resource in :data:`FREE_READS`, a
    body-less OPTIONS, a POST to :data:`FREE_POSTS`. Every POST to a billed endpoint is billed
    (any spelling of its path)."""
    path = canonical_path(target)
    if method == "POST":
        if path in BILLED:
            return "billed"
        return "free" if path in FREE_POSTS else "unknown"
    if has_body:
        return "unknown"
    if method in ("GET", "HEAD") and FREE_READS.fullmatch(path):
        return "free"
    if method == "OPTIONS":
        return "free"
    return "unknown"


def refusal(method: str, target: str, headers: list[tuple[str, str]], *, has_body: bool) -> Refused | None:
    """Why this request to an LLM host must not be sent at all, or None. ``headers``: (name, value)
    pairs as received (any case, repeated names kept)."""
    names = {k.lower() for k, _ in headers}
    connection = {t.strip().lower() for k, v in headers if k.lower() == "connection" for t in v.split(",")}
    if "upgrade" in names or "upgrade" in connection:
        proto = next((v for k, v in headers if k.lower() == "upgrade"), "") or "another protocol"
        return Refused(403, "pouch_unmetered_upgrade",
                       f"pouch: this request asks to switch the connection to {proto} (Upgrade); pouch cannot "
                       "price or meter what such a connection carries (e.g. a Realtime WebSocket session), so it "
                       "refuses upgrades to LLM hosts. Nothing was sent.")
    if method not in STANDARD_METHODS:
        return Refused(405, "pouch_method_not_allowed",
                       f"pouch: the method {method!r} is not one pouch forwards to an LLM host "
                       f"({', '.join(sorted(STANDARD_METHODS))}); the request was not sent.")
    override = next((k for k in OVERRIDE_HEADERS if k in names), None)
    if override is None and "_method" in query_params(target):
        override = "?_method="
    if override is not None:
        return Refused(400, "pouch_method_override",
                       f"pouch: {override} asks the server to treat this {method} as another method; pouch "
                       "prices requests by their real method, so it refuses overrides. The request was not sent.")
    if has_body and method != "POST" and canonical_path(target) in BILLED:
        return Refused(400, "pouch_body_not_allowed",
                       f"pouch: a {method} with a body to {canonical_path(target)} could be served as a billed "
                       "call that pouch did not price; send it as a POST. The request was not sent.")
    return None


#: header names (lower-case bytes) :func:`refusal` acts on; ``connection`` only when it names ``upgrade``
REFUSAL_NAMES = frozenset({b"upgrade", *(h.encode() for h in OVERRIDE_HEADERS)})


class HeaderIndex:
    """A request's header fields by lower-case name, read once (mitmproxy's ``headers.get`` scans
    and lower-cases every field per lookup, ~2k instructions a field, and the request hooks ask
    for several names per call). ``values[name]``: the value as bytes, repeated fields joined by
    ``b", "`` (:func:`folded` decodes it as ``headers.get`` would); ``special``: whether
    :func:`refusal` could act on a header (an upgrade, an override, a ``Connection`` naming
    ``upgrade``, a name that is not ASCII); ``names``: each field's lower-case name, in order."""

    __slots__ = ("fields", "values", "special", "names")

    def __init__(self, fields: tuple[tuple[bytes, bytes], ...]) -> None:
        self.fields = fields
        if not fields:
            self.values: dict[bytes, bytes] = {}
            self.special = False
            self.names: list[bytes] = []
            return
        names, values = zip(*fields)
        low = b"\0".join(names).lower()  # in C: no Python loop over the fields
        if low.count(b"\0") == len(fields) - 1 and low.isascii():
            self.names = low.split(b"\0")
            self.values = dict(zip(self.names, values))
            if len(self.values) != len(fields):  # a repeated name: its values joined in order
                self.values = {}
                for n, v in zip(self.names, values):
                    self.values[n] = self.values[n] + b", " + v if n in self.values else v
            self.special = not REFUSAL_NAMES.isdisjoint(self.values) or (
                b"connection" in self.values and b"upgrade" in self.values[b"connection"].lower())
        else:  # a NUL or a non-ASCII byte in a name: the plain loop, flagged for refusal's own look
            self.names = [n.lower() for n in names]
            self.values = {}
            for n, v in zip(self.names, values):
                self.values[n] = self.values[n] + b", " + v if n in self.values else v
            self.special = True


#: the last request's index: the hooks of one request share it while its header fields are
#: unchanged (mitmproxy replaces the ``fields`` tuple on any change, so ``is`` tells)
_LAST_INDEX: HeaderIndex = HeaderIndex(())


def header_index(fields: tuple[tuple[bytes, bytes], ...]) -> HeaderIndex:
    """The :class:`HeaderIndex` of ``fields`` (built once per tuple, from any thread)."""
    last = _LAST_INDEX
    if last.fields is fields:
        return last
    index = HeaderIndex(fields)
    globals()["_LAST_INDEX"] = index
    return index


def folded(value: bytes | None) -> str | None:
    """A header's value as mitmproxy's ``headers.get`` gives it (decoded as UTF-8 with
    surrogateescape; repeated fields joined with ``", "``), or None when absent."""
    return None if value is None else value.decode("utf-8", "surrogateescape")


_AUTHORITY = re.compile(r"\[([0-9A-Fa-f:.]+)\](?::(\d{1,5}))?|([^\s:/@\[\]]+)(?::(\d{1,5}))?")


@lru_cache(maxsize=256)
def _split_authority(value: str, default_port: int) -> tuple[str, int] | None:
    m = _AUTHORITY.fullmatch(value)
    if m is None:
        return None
    host = (m.group(1) or m.group(3)).lower().rstrip(".")
    port = m.group(2) or m.group(4)
    if not host:
        return None
    return host, int(port) if port else default_port


def split_authority(value: str, default_port: int) -> tuple[str, int] | None:
    """``host[:port]`` (or ``[v6]:port``) -> (host, port): lower case, trailing dot dropped; None
    when it is not an authority."""
    return _split_authority(value.strip(), default_port)  # memoised: a client sends the same Host each call


def describe(addr: tuple[str, int]) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def misdirected(dest: tuple[str, int], claims: list[str], default_port: int) -> str | None:
    """The first ``Host`` / authority in ``claims`` that does not name ``dest``, or None."""
    for claim in claims:
        if split_authority(claim, default_port) != dest:
            return claim
    return None
