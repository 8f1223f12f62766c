"""Issue 16 §4: no tiktoken encoding resident until an exact count matters.

The prompt estimate is bounded from above by the same cookbook formula over UTF-8 bytes (a
byte-level BPE token is at least one byte); the gate admits on that bound far from every limit
and decides on the exact count near one; a stream's checkpoint never loads an encoding; and
concurrent first loads load once.
"""

from __future__ import annotations

import base64
import random
import threading
import time
from decimal import Decimal as D

import pytest

from pouch_addon import tokens
from pouch_addon.addons.gate import Admission
from pouch_addon.budget import LedgerState
from pouch_addon.ledger_rules import Wallet
from pouch_addon.limits import RateBook
from pouch_addon.metering import StreamMeter
from pouch_addon.plan import PlanSettings, draft_plan
from pouch_addon.pricing import PriceTable

TABLE = PriceTable.load()
MODELS = ("gpt-4o", "gpt-4")  # o200k_base, cl100k_base

# pieces of text chosen to stress the byte bound: multi-byte scripts, emoji (4 bytes, often
# several tokens each), combining marks, code, whitespace runs, special-token text, digits
_ALPHABETS = [
    "abcdefghijklmnopqrstuvwxyz ", "ABCDEFGHIJKLMNOPQRSTUVWXYZ  ", "0123456789 .,;:-", "{}[]()<>=+*/&|!?\"'`\\\n\t ",
    "éèêëàâäôöûüçñß ", "абвгдежзийклмнопрстуфхцчшщыэюя ", "αβγδεζηθικλμνξοπρστυφχψω ", "你好世界中文字符测试模型预算",
    "日本語のテキストとカタカナ", "한국어텍스트", "العربيةنص ", "हिन्दीपाठ ", "🎉🚀👍🏽🧑‍💻❤️‍🔥🇫🇷😀", "\u0301\u0308\u200d\ufe0f",
    "        ", "\n\n\n", "<|endoftext|><|fim_prefix|>",
]


def _random_text(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(0, 12)):
        alphabet = rng.choice(_ALPHABETS)
        parts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))))
    if rng.random() < 0.2:
        parts.append("def f(x):\n    return {'a': [1, 2, 3]}  # code\n")
    return "".join(parts)


def _png(width: int, height: int) -> str:
    head = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + width.to_bytes(4, "big") + height.to_bytes(4, "big")
    return "data:image/png;base64," + base64.b64encode(head + b"\x08\x02\x00\x00\x00" + b"\x00" * 16).decode()


def _chat_body(rng: random.Random) -> dict:
    messages = []
    for _ in range(rng.randint(1, 5)):
        kind = rng.random()
        if kind < 0.5:
            m = {"role": rng.choice(["system", "user", "assistant"]), "content": _random_text(rng)}
        elif kind < 0.7:
            m = {"role": "user", "content": [{"type": "text", "text": _random_text(rng)},
                                             {"type": "image_url", "image_url": {"url": _png(64, 48), "detail": "low"}}]}
        elif kind < 0.85:
            m = {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": _random_text(rng)}}]}
        else:
            m = {"role": "tool", "tool_call_id": "call_1", "content": _random_text(rng)}
        if rng.random() < 0.3:
            m["name"] = "n" + _random_text(rng)[:10].replace(" ", "")
        messages.append(m)
    body: dict = {"model": "gpt-4o", "messages": messages}
    if rng.random() < 0.5:
        body["tools"] = [{"type": "function", "function": {
            "name": "lookup", "description": _random_text(rng),
            "parameters": {"type": "object", "properties": {
                "q": {"type": "string", "description": _random_text(rng)},
                "mode": {"type": "string", "enum": [_random_text(rng)[:8], "b"]},
                "nested": {"type": "object", "properties": {"x": {"type": "integer"}}}},
                "required": ["q"]}}}]
    if rng.random() < 0.3:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "s", "schema": {
            "type": "object", "properties": {"t": {"type": "string", "description": _random_text(rng)}}}}}
    return body


def _responses_body(rng: random.Random) -> dict:
    items = [{"role": "user", "content": [{"type": "input_text", "text": _random_text(rng)}]},
             {"type": "function_call", "call_id": "c", "name": "f", "arguments": _random_text(rng)},
             {"type": "function_call_output", "call_id": "c", "output": _random_text(rng)},
             {"type": "reasoning", "summary": [{"type": "summary_text", "text": _random_text(rng)}]}]
    return {"model": "gpt-4o", "instructions": _random_text(rng), "input": rng.sample(items, rng.randint(1, 4))}


def _bound_violations(count_bytes) -> list[str]:
    """Texts and bodies where ``count_bytes`` (the bound) is below the exact tiktoken count."""
    rng = random.Random(2026_12_07)
    bad = []
    for _ in range(400):
        text = _random_text(rng)
        for model in MODELS:
            if count_bytes(text) < tokens.count_text(text, model):
                bad.append(f"text {text!r} ({model})")
    return bad


def test_the_byte_bound_of_a_text_is_never_below_its_token_count():
    assert _bound_violations(tokens._Bytes.count) == []


def test_the_texts_would_catch_a_bound_that_under_counts():
    """The same texts refute a bound by characters (an emoji or CJK character can be several
    tokens): the test above fails when the bound under-counts."""
    assert _bound_violations(len) != []


@pytest.mark.parametrize("model", MODELS)
def test_the_bounded_estimate_is_never_below_the_exact_one(model):
    rng = random.Random(20261207)
    for _ in range(150):
        chat = _chat_body(rng)
        assert tokens.estimate_chat_prompt(chat, model, exact=False) >= tokens.estimate_chat_prompt(chat, model), chat
        resp = _responses_body(rng)
        assert (tokens.estimate_responses_input(resp, model, exact=False)
                >= tokens.estimate_responses_input(resp, model)), resp
        prompt = {"prompt": [_random_text(rng), _random_text(rng)], "suffix": _random_text(rng)}
        assert (tokens.estimate_completion_prompt(prompt, model, exact=False)
                >= tokens.estimate_completion_prompt(prompt, model))
        emb = {"input": _random_text(rng)}
        assert tokens.estimate_embedding_input(emb, model, exact=False) >= tokens.estimate_embedding_input(emb, model)
    ids = {"input": [[1, 2, 3], [4, 5]]}  # token arrays count as themselves either way
    assert tokens.estimate_embedding_input(ids, model, exact=False) == tokens.estimate_embedding_input(ids, model) == 5


# --- admission --------------------------------------------------------------------------------

@pytest.fixture()
def fresh_cache(monkeypatch):
    monkeypatch.setattr(tokens, "_LOADED", {})
    monkeypatch.setattr(tokens, "_PRELOADING", set(), raising=False)
    monkeypatch.setattr(tokens, "_COMPACT", {}, raising=False)
    monkeypatch.setattr(tokens, "_COMPACT_LOADING", set(), raising=False)


BODY = {"model": "gpt-4o-mini", "max_tokens": 10,  # the input decides the worst case: ~6 bytes a token
        "messages": [{"role": "system", "content": "You are terse. " * 30},
                     {"role": "user", "content": "Summarise the plan in one line, please. " * 20}]}


def _admit(draft, state: LedgerState, wallet: str = "default"):
    meta: dict = {}
    admission = Admission(draft, wallet, meta, RateBook())
    return admission, admission.decide(state, time.time()), meta


def test_admission_far_from_the_budget_loads_no_encoding(fresh_cache):
    """Before issue 16 §4 the draft counted the prompt with tiktoken, loading o200k_base
    (~41 MiB resident) for the proxy's first call whatever the budget."""
    draft = draft_plan("POST", "/v1/chat/completions", dict(BODY), table=TABLE)
    admission, amount, meta = _admit(draft, LedgerState(budget=D(100)))
    assert isinstance(amount, D) and amount == admission.plan.worst_case
    assert tokens._LOADED == {}
    assert meta["input_estimate"] == "utf8_bytes"
    exact = tokens.estimate_chat_prompt(BODY, "gpt-4o-mini")  # (loads it now, for the comparison)
    assert meta["estimated_input_tokens"] == draft.input_tokens >= exact


def _fitting_budget(draft_exact, draft_bound) -> D:
    """A budget the exact plan fits (with room to spare by NEAR) and the bounded one does not."""
    worst_exact = draft_exact.finish(D(10**6)).worst_case
    worst_bound = draft_bound.finish(D(10**6)).worst_case
    assert worst_bound > worst_exact
    budget = worst_exact * 2 + (worst_bound - worst_exact) / 4
    assert worst_exact * 2 <= budget < worst_bound
    return budget


def test_near_the_budget_the_exact_count_decides(fresh_cache):
    """A call that fits by the exact count but not by the byte bound is admitted: the bounded
    decision raises NeedsExact (nothing reserved, no block recorded), the exact one admits."""
    from pouch_addon.addons.gate import NeedsExact
    bounded = draft_plan("POST", "/v1/chat/completions", dict(BODY), table=TABLE)
    assert tokens._LOADED == {}
    exact = draft_plan("POST", "/v1/chat/completions", dict(BODY), table=TABLE,
                       settings=PlanSettings(exact_input=True))
    assert exact.input_method == "tiktoken" and exact.input_tokens < bounded.input_tokens
    state = LedgerState(budget=_fitting_budget(exact, bounded))
    with pytest.raises(NeedsExact):
        _admit(bounded, state)
    admission, amount, meta = _admit(exact, state)
    assert isinstance(amount, D) and amount == admission.plan.worst_case <= state.remaining
    assert meta["input_estimate"] == "tiktoken" and meta["estimated_input_tokens"] == exact.input_tokens


def test_a_budget_that_shapes_the_injected_cap_asks_for_the_exact_count(fresh_cache):
    """No cap in the request: pouch injects what the budget pays. When the budget (not the
    model's max output) sets it, a smaller input count would give a larger cap."""
    from pouch_addon.addons.gate import NeedsExact
    body = {k: v for k, v in BODY.items() if k != "max_tokens"}
    bounded = draft_plan("POST", "/v1/chat/completions", body, table=TABLE)
    with pytest.raises(NeedsExact):
        _admit(bounded, LedgerState(budget=D("0.001")))
    _, amount, _ = _admit(bounded, LedgerState(budget=D(1000)))  # the model's max output: far away
    assert isinstance(amount, D) and tokens._LOADED == {}


def test_a_wallet_with_a_tpm_limit_counts_exactly(fresh_cache):
    from pouch_addon.addons.gate import NeedsExact
    bounded = draft_plan("POST", "/v1/chat/completions", dict(BODY), table=TABLE)
    state = LedgerState(budget=D(1000))
    state.wallets["app"] = Wallet("app", D(100), tpm=10**6)
    with pytest.raises(NeedsExact):
        _admit(bounded, state, wallet="app")
    state.wallets["app"] = Wallet("app", D(100), rpm=10)  # rpm alone counts requests, not tokens
    _, amount, _ = _admit(bounded, state, wallet="app")
    assert isinstance(amount, D)


# --- loading ----------------------------------------------------------------------------------

def test_concurrent_first_loads_load_once(fresh_cache, monkeypatch):
    """Eight threads need o200k_base at once (the gate's worker threads, a settle, the meter's
    background load): the encoding is built once and all get the same object."""
    built: list[str] = []
    real = tokens._load_unlocked

    def slow_load(name):
        built.append(name)
        time.sleep(0.05)  # widen the window in which a second load could start
        return real(name)

    monkeypatch.setattr(tokens, "_load_unlocked", slow_load)
    got: list = []
    threads = [threading.Thread(target=lambda: got.append(tokens.get_encoding("o200k_base"))) for _ in range(8)]
    for t in threads:
        t.start()
    tokens.preload("o200k_base")
    for t in threads:
        t.join()
    deadline = time.time() + 10
    while "o200k_base" in tokens._PRELOADING and not tokens.is_loaded("o200k_base") and time.time() < deadline:
        time.sleep(0.01)
    assert built == ["o200k_base"]
    assert len(got) == 8 and all(e is got[0] for e in got)


# --- the stream meter -------------------------------------------------------------------------

def _chunk(text: str) -> bytes:
    import json
    return b"data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": text}}]}).encode() + b"\n\n"


def test_a_checkpoint_of_a_stream_far_from_its_cap_loads_no_encoding(fresh_cache):
    """The checkpoint pass runs on the event loop every 0.5 s: before, each checkpoint counted
    the stream's text with tiktoken, loading the encoding for the first stream over 0.5 s."""
    price = TABLE.resolve("gpt-4o-mini")
    meter = StreamMeter("chat", price, "gpt-4o-mini", 50, D(1), hide_usage_chunk=False)
    text = "".join(f"word{i} " for i in range(40))
    for i in range(0, len(text), 7):
        meter.feed(_chunk(text[i:i + 7]))
    snap = meter.checkpoint()
    assert tokens._LOADED == {} and tokens._PRELOADING == set()
    assert snap["output_bound"] == "utf8_bytes" and snap["output_tokens"] == len(text.encode())
    assert snap["output_tokens"] >= tokens.count_text(text, "gpt-4o-mini")
    assert not meter.cut


def test_a_stream_near_its_cap_is_cut_on_the_exact_count(fresh_cache):
    """Bytes past the cap do not cut a stream whose tokens are within it: half way to the cut
    in bytes the compact table starts loading in the background, at the cut it counts exactly.
    Before (issue 16 §4) that loaded tiktoken's encoding, ~41 MiB resident: the bench's default
    caps put every stream past half its cap, so the proxy carried it after its first stream."""
    price = TABLE.resolve("gpt-4o-mini")
    plan_cap = 40
    from pouch_addon.plan import worst_token_cost
    reservation = worst_token_cost(price, None, 10, plan_cap)
    meter = StreamMeter("chat", price, "gpt-4o-mini", 10, reservation, hide_usage_chunk=False)
    words = " ".join(["hello"] * 30)  # 30 tokens, 179 bytes: over the cap in bytes, not in tokens
    for i in range(0, len(words), 6):
        meter.feed(_chunk(words[i:i + 6]))
    assert not meter.cut
    assert not tokens.is_loaded("o200k_base")  # tiktoken's table is not needed to meter a stream
    assert tokens.stream_ready("gpt-4o-mini") and set(tokens._COMPACT) == {"o200k_base"}
    assert meter.output_tokens_counted == 30
    assert tokens.count_text(words, "gpt-4o-mini") == 30  # (loads tiktoken now, to compare)
    more = " ".join(["hello"] * 20)
    for i in range(0, len(more), 6):
        meter.feed(_chunk(more[i:i + 6]))
    assert meter.cut  # past 40 tokens: cut, as before


def test_a_checkpoint_after_the_provider_usage_loads_no_encoding(fresh_cache):
    """The final usage came (the call is not settled yet): the checkpoint takes the provider's
    figures and still counts no text (this loaded the encoding at the end of every long stream)."""
    import json
    price = TABLE.resolve("gpt-4o-mini")
    meter = StreamMeter("chat", price, "gpt-4o-mini", 50, D(1), hide_usage_chunk=True)
    for word in ("one ", "two ", "three "):
        meter.feed(_chunk(word))
    usage = {"prompt_tokens": 50, "completion_tokens": 3, "total_tokens": 53}
    meter.feed(b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\n")
    snap = meter.checkpoint()
    assert tokens._LOADED == {}
    assert snap["usage_source"] == "provider" and snap["final_cost"] == snap["running_cost"]
    assert D(snap["running_cost"]) == D(50) * price.rates.input / 10**6 + D(3) * price.rates.output / 10**6
