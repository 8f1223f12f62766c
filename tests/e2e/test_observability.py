"""Following and exporting spend, end to end through a real mitmdump with pouch, the fake OpenAI
and the openai SDK: ``pouch history --jsonl --follow``, ``/metrics`` and OpenTelemetry spans."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from datetime import UTC, datetime
from decimal import Decimal as D

import pytest

from harness import _proxy_env, wait_until
from pouch_addon.budget import Ledger

pytestmark = pytest.mark.e2e

CHAT = {"model": "gpt-4o-mini", "max_tokens": 20, "client": {"max_retries": 0},
        "extra_headers": {"x-fake-prompt-tokens": "30", "x-fake-chunks": "5", "x-fake-cached-tokens": "10",
                          "x-fake-reasoning-tokens": "2"}}


class LineReader:
    """Collects a subprocess's stdout lines in a thread (so a test can wait for one, bounded)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc, self.lines = proc, []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)


def test_history_follow_prints_a_settle_as_it_happens(e2e, fake, tmp_path):
    home = tmp_path / "home"
    Ledger(home).set_budget(D(1))
    proxy = e2e.start_proxy(home)
    env = e2e.client_env(proxy)
    since = datetime.now(UTC).isoformat()
    follow = subprocess.Popen([sys.executable, "-m", "pouch_addon.cli", "history", "--jsonl", "--follow",
                               "--since", since, "--home", str(home)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_proxy_env())
    try:
        reader = LineReader(follow)
        r = e2e.run_sdk("chat_stream", CHAT, env)
        assert r["ok"], r
        wait_until(lambda: reader.lines, 10, "a line from pouch history --follow",
                   alive=lambda: follow.poll() is None)
        entry = json.loads(reader.lines[0])
        assert entry["kind"] == "settle" and entry["model"] == "gpt-4o-mini" and entry["output_tokens"] == 7
        assert D(entry["cost"]) == D(Ledger(home).history(kinds=("settle",))[0]["cost"]) > 0
        e2e.run_cli(home, "pause")
        r = e2e.run_curl("https://api.openai.com/v1/chat/completions", env=env,
                         json_body={"model": "gpt-4o", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]})
        assert r.status == 402
        wait_until(lambda: len(reader.lines) >= 2, 10, "the block", alive=lambda: follow.poll() is None)
        assert json.loads(reader.lines[1])["kind"] == "block"
    finally:
        follow.terminate()
        follow.wait(5)


def scrape(port: int) -> dict[tuple, float]:
    """``/metrics`` parsed by prometheus_client's own parser: (sample name, sorted labels) -> value."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    text = opener.open(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def total(samples: dict[tuple, float], name: str, **match: str) -> float:
    return sum(v for (n, labels), v in samples.items()
               if n == name and all(dict(labels).get(k) == want for k, want in match.items()))


def test_metrics_are_scraped_and_equal_the_ledger(e2e, fake, tmp_path):
    from harness import free_port

    home = tmp_path / "home"
    ledger = Ledger(home)
    ledger.set_budget(D(1))
    ledger.add_wallet("app", D("0.5"))
    port = free_port()
    proxy = e2e.start_proxy(home, {"pouch_metrics": f"127.0.0.1:{port}", "pouch_metrics_wallets": 1})
    env = e2e.client_env(proxy)
    app = {**env, "HTTPS_PROXY": f"http://app:x@127.0.0.1:{proxy.port}", "https_proxy": f"http://app:x@127.0.0.1:{proxy.port}"}
    assert all(r["ok"] for r in e2e.run_sdk_batch([("chat_stream", CHAT), ("chat", CHAT)], app))
    assert all(r["ok"] for r in e2e.run_sdk_batch([("chat", CHAT)] * 2, env))  # wallet "python...": folded into other
    e2e.run_cli(home, "pause")
    blocked = e2e.run_curl("https://api.openai.com/v1/chat/completions", env=env,
                           json_body={"model": "gpt-4o", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]})
    assert blocked.status == 402
    wait_until(lambda: ledger.status().requests == 4, 10, "four settles")
    settles = ledger.history(kinds=("settle",))
    wait_until(lambda: total(scrape(port), "pouch_requests_total") == 4, 10, "four requests in /metrics")
    m = scrape(port)
    spent = sum(D(e["cost"]) for e in settles)
    assert spent == ledger.status().spent > 0
    assert total(m, "pouch_spend_usd_total") == pytest.approx(float(spent), rel=1e-12)
    assert total(m, "pouch_spend_usd_total", wallet="app") == pytest.approx(
        float(sum(D(e["cost"]) for e in settles if e["wallet"] == "app")), rel=1e-12)
    assert {dict(labels)["wallet"] for (n, labels) in m if n == "pouch_spend_usd_total"} == {"app", "other"}
    for kind in ("input", "cached", "output", "reasoning"):
        assert total(m, "pouch_tokens_total", type=kind) == sum(e[f"{kind}_tokens"] for e in settles) > 0
    assert total(m, "pouch_requests_total", provider="openai", model="gpt-4o-mini", status="ok") == 4
    assert total(m, "pouch_blocks_total", reason="pouch_paused") == 1 == ledger.status().blocked
    assert total(m, "pouch_in_flight_requests") == 0 and total(m, "pouch_reserved_usd") == 0
    wait_until(lambda: total(scrape(port), "pouch_spent_usd") == pytest.approx(float(spent)), 10, "spent gauge")
    assert total(scrape(port), "pouch_remaining_usd") == pytest.approx(float(ledger.status().remaining), rel=1e-12)
    assert total(m, "pouch_request_added_seconds_count") == 4
    assert total(m, "pouch_upstream_seconds_count") == 4
    assert total(m, "pouch_ledger_commit_seconds_count") == 4


class OtlpReceiver:
    """A local OTLP/HTTP trace receiver: each POST /v1/traces body parsed as protobuf."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        self.spans: list = []
        self.resources: list = []
        self.posts = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                data = self.rfile.read(int(self.headers.get("content-length", "0")))
                req = ExportTraceServiceRequest()
                req.ParseFromString(data)
                outer.posts += 1
                for rs in req.resource_spans:
                    outer.resources.append(rs.resource)
                    for ss in rs.scope_spans:
                        outer.spans.extend(ss.spans)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *a) -> None:  # noqa: ANN002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def attributes(span) -> dict:
    out = {}
    for kv in span.attributes:
        v = kv.value
        out[kv.key] = (v.string_value if v.HasField("string_value") else v.int_value if v.HasField("int_value")
                       else [x.string_value for x in v.array_value.values] if v.HasField("array_value") else None)
    return out


def test_spans_reach_an_otlp_receiver_with_the_genai_attributes(e2e, fake, tmp_path, monkeypatch):
    receiver = OtlpReceiver()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "1500")  # both calls in one window
        monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "1")  # each span its own request
        home = tmp_path / "home"
        ledger = Ledger(home)
        ledger.set_budget(D(1))
        proxy = e2e.start_proxy(home, {"pouch_otel": True})
        env = e2e.client_env(proxy)
        assert all(r["ok"] for r in e2e.run_sdk_batch([("chat_stream", CHAT), ("chat", CHAT)], env))
        wait_until(lambda: len(receiver.spans) >= 2, 20, "two spans at the OTLP receiver")
        settles = {e["id"]: e for e in ledger.history(kinds=("settle",))}
        assert len(receiver.spans) == 2 and receiver.posts == 2
        for span in receiver.spans:
            a = attributes(span)
            e = settles[a["pouch.reservation_id"]]
            assert span.name == "chat gpt-4o-mini"
            assert a["gen_ai.system"] == "openai" and a["gen_ai.request.model"] == "gpt-4o-mini"
            assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (30, 7)
            assert (a["gen_ai.usage.cached_tokens"], a["gen_ai.usage.reasoning_tokens"]) == (10, 2)
            assert a["pouch.cost_usd"] == e["cost"] and a["pouch.reserved_usd"] == e["reserved"]
            assert span.end_time_unix_nano >= span.start_time_unix_nano > 0
        service = {kv.key: kv.value.string_value for r in receiver.resources for kv in r.attributes}
        assert service["service.name"] == "pouch"
    finally:
        receiver.server.shutdown()
