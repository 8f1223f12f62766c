"""Shared server plumbing of the provider fakes (``fake_anthropic.py``, ``fake_gemini.py``).

They reuse ``fake_openai.py``'s HTTP/1.1 parser, TLS context, chunked streaming and JSONL log
(so the harness's ``Fake`` helpers read every fake's log the same way), and differ only in
their endpoints, their response headers and their error shapes. Stdlib only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import time
import zlib
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import fake_openai as fo

WORDS = fo.WORDS
tok = fo.tok
fake_text = fo.fake_text
Request = fo.Request
ClientGone = fo.ClientGone
Died = fo.Died


def log(ev: str, **fields: Any) -> None:
    """Write one event to the fake's JSONL log (the same format as fake_openai's)."""
    fo.LOG(ev, **fields)


def truthy(v: str | None) -> bool:
    return (v or "").strip().lower() in ("1", "true", "yes", "on")


@dataclass
class Plan:
    """What one response will contain; every count is deterministic (see each fake's docstring)."""
    prompt: int             # all input tokens, cache included
    cache_read: int
    cache_write_5m: int
    cache_write_1h: int
    reasoning: int          # per candidate
    content: int            # per candidate
    n: int
    truncated: bool
    delay_s: float
    die_after: int | None
    service_tier: str
    tools: list[str]
    omit_usage: bool
    report_input: int | None
    report_output: int | None


def base_plan(req: Request, prompt: int, cap: int | None, *, reasoning_cap: int | None = None,
              reasoning_in_cap: bool = True, n: int = 1, tier: str = "standard",
              tool_tokens: int = 0) -> Plan:
    """Reasoning first, then content, within ``cap`` (unless ``x-fake-ignore-cap``); tool calls
    (``tool_tokens`` in all) only when what is left of the cap still covers them."""
    want_r = req.h_int("x-fake-reasoning-tokens", 0) or 0
    want_c = req.h_int("x-fake-chunks", fo.DEFAULT_CHUNKS)
    assert want_c is not None
    tools = [t.strip() for t in (req.h("x-fake-tool-calls") or "").split(",") if t.strip()]
    if reasoning_cap is not None and reasoning_cap >= 0:
        want_r = min(want_r, reasoning_cap)
    if cap is None or truthy(req.h("x-fake-ignore-cap")):
        r, c, truncated = want_r, want_c, False
    else:
        cap = max(0, int(cap))
        if reasoning_in_cap:
            r = min(want_r, cap)
            c = min(want_c, cap - r)
        else:
            r, c = want_r, min(want_c, cap)
        truncated = (c < want_c) or (r < want_r)
        used = (r if reasoning_in_cap else 0) + c
        if tools and not truncated and used + tool_tokens * len(tools) > cap:
            tools, truncated = [], True
    cache_read = max(0, req.h_int("x-fake-cached-tokens", 0) or 0)
    w5 = max(0, req.h_int("x-fake-cache-write-tokens", 0) or 0)
    w1h = max(0, req.h_int("x-fake-cache-write-1h-tokens", 0) or 0)
    return Plan(
        prompt=prompt, cache_read=cache_read, cache_write_5m=w5, cache_write_1h=w1h, reasoning=r, content=c,
        n=max(1, int(n or 1)), truncated=truncated, delay_s=(req.h_int("x-fake-delay-ms", 0) or 0) / 1000.0,
        die_after=req.h_int("x-fake-die-after"), service_tier=req.h("x-fake-service-tier") or tier,
        tools=tools, omit_usage=truthy(req.h("x-fake-omit-usage")),
        report_input=req.h_int("x-fake-report-input-tokens"), report_output=req.h_int("x-fake-report-output-tokens"),
    )


class ProviderConn(fo.Conn):
    """fake_openai's connection with this provider's response headers and stream content type."""

    base_headers: Callable[["ProviderConn"], dict[str, str]] = staticmethod(lambda c: {})  # type: ignore[assignment]

    def _head(self, status: int, headers: dict[str, str]) -> bytes:
        lines = [f"HTTP/1.1 {status} {fo.REASONS.get(status, 'Status')}"]
        base = {"date": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime()),
                **type(self).base_headers(self),
                "x-fake-conn": str(self.id), "x-fake-req": str(self.req_id)}
        base.update(headers)
        if not self.keep_alive:
            base["connection"] = "close"
        lines += [f"{k}: {v}" for k, v in base.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def stream_start(self, content_type: str = "text/event-stream; charset=utf-8") -> None:  # type: ignore[override]
        self.writer.write(self._head(200, {"content-type": content_type, "transfer-encoding": "chunked",
                                           "cache-control": "no-cache"}))
        await self.writer.drain()

    async def delay_s(self, seconds: float) -> None:
        if seconds > 0:
            await asyncio.sleep(seconds)


Dispatch = Callable[[ProviderConn, Request], Awaitable[None]]


def parse_body(req: Request) -> tuple[Any, bytes]:
    raw = b""
    try:
        raw = fo.decode_body(req)
        return (json.loads(raw) if raw else None), raw
    except (ValueError, fo.BadRequest, zlib.error):
        return None, raw


def log_request(c: ProviderConn, req: Request, body: Any, raw: bytes, **extra: Any) -> None:
    log("request", conn=c.id, req=c.req_id, method=req.method, path=req.target, http_version=req.version,
        headers=req.headers, raw_headers=req.raw_headers, body=body,
        body_text=None if (body is not None or not raw) else raw[:4000].decode("utf-8", "replace"),
        body_len=len(req.body), **extra)


def make_handler(conn_cls: type[ProviderConn], dispatch: Dispatch) -> Callable:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        c = conn_cls(reader, writer)
        sslobj = writer.get_extra_info("ssl_object")
        sni = getattr(sslobj, "_fake_sni", None) if sslobj is not None else None
        if sni is None and sslobj is not None:
            sni = fo._SNI.pop(id(sslobj), None)
        log("conn_open", conn=c.id, peer=list(writer.get_extra_info("peername") or ()), sni=sni,
            alpn=sslobj.selected_alpn_protocol() if sslobj is not None else None)
        try:
            while c.keep_alive:
                req = await fo.read_request(reader, writer)
                if req is None:
                    break
                c.req_id = next(fo._req_ids)
                c.nreq += 1
                if "close" in req.h("connection", "").lower() or req.version == "HTTP/1.0":
                    c.keep_alive = False
                await dispatch(c, req)
        except ClientGone:
            pass
        except Died:
            return
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, fo.BadRequest, OSError) as e:
            log("conn_error", conn=c.id, error=repr(e))
        except Exception as e:  # noqa: BLE001 - keep serving other connections, but record it
            log("conn_error", conn=c.id, error=f"unexpected {e!r}")
        finally:
            log("conn_closed", conn=c.id, requests=c.nreq)
            try:
                writer.close()
            except Exception:  # noqa: BLE001
                pass
    return handle


async def _serve(args: argparse.Namespace, handler: Callable, label: str) -> None:
    fo.LOG = fo.JsonlLog(args.log)
    ctx = fo.make_ssl_context(args.cert, args.key)
    server = await asyncio.start_server(handler, args.host, args.port, ssl=ctx, limit=1 << 22,
                                        ssl_handshake_timeout=10)
    port = server.sockets[0].getsockname()[1]
    log("listening", host=args.host, port=port, pid=os.getpid(), kind=label)
    if args.ready_file:
        tmp = args.ready_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(port))
        os.replace(tmp, args.ready_file)
    print(f"fake {label} listening on {args.host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


def main(label: str, description: str, conn_cls: type[ProviderConn], dispatch: Dispatch,
         argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--log")
    ap.add_argument("--ready-file")
    args = ap.parse_args(argv)
    try:
        asyncio.run(_serve(args, make_handler(conn_cls, dispatch), label))
    except KeyboardInterrupt:
        pass
    return 0
