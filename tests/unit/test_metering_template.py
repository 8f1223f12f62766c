"""StreamMeter's templated content chunks: the same bytes and state as parsing every chunk, and
the cut-off still exact at the cap (the byte bound never under-counts)."""

from __future__ import annotations

import json
import random
from decimal import Decimal

import pytest

from pouch_addon import metering
from pouch_addon.metering import _TEMPLATE_TRIES, StreamMeter, output_threshold
from pouch_addon.pricing import PriceTable, Usage
from pouch_addon.tokens import count_text

D = Decimal
PRICE = PriceTable.load().resolve("gpt-4o")  # $2.50 in / $10 out per 1M tokens


def chunk(delta, *, index=0, finish=None, usage="null", model="gpt-4o-2024-08-06", tier="default",
          pad: str | None = "ab12", choices=None, spaced=False, order="openai") -> bytes:
    """A Chat chunk laid out as OpenAI writes it (usage before the padding); ``order``
    ``pad_first``: the padding before the usage, ``usage_first``: the usage before everything."""
    obj = {"usage": None} if order == "usage_first" else {}
    obj.update({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model,
                "service_tier": tier, "system_fingerprint": "fp_1",
                "choices": choices if choices is not None else [
                    {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}]})
    if pad is not None and order == "pad_first":
        obj["obfuscation"] = pad
    if usage != "absent":
        obj["usage"] = None if usage == "null" else usage
    else:
        obj.pop("usage", None)
    if pad is not None and order != "pad_first":
        obj["obfuscation"] = pad
    seps = (", ", ": ") if spaced else (",", ":")
    return b"data: " + json.dumps(obj, separators=seps, ensure_ascii=False).encode() + b"\n\n"


USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
DONE = b"data: [DONE]\n\n"


def meter(*, hide=True, reservation="1", templates=True) -> StreamMeter:
    m = StreamMeter("chat", PRICE, "gpt-4o", 100, D(reservation), hide)
    if not templates:
        m._tpl_tries = _TEMPLATE_TRIES  # never learns one: every chunk parsed
    return m


def run(m: StreamMeter, chunks: list[bytes]) -> tuple[list[bytes], dict]:
    out = []
    bounds = []  # the byte bound of the output after each chunk (what the cut-off test reads)
    for c in chunks:
        out.append(b"".join(m.feed(c)))
        bounds.append(m._output + m._pending_bytes)
    out.append(b"".join(m.finish()))
    st = {"cut": m.cut, "cut_reason": m.cut_reason, "done": m.done, "events": m.events,
          "parse_errors": m.parse_errors, "model_reported": m.model_reported, "service_tier": m.service_tier,
          "provider_error": m.provider_error, "usage_hidden": m.usage_hidden, "usage_source": m.usage_source,
          "usage_final": m.usage_final, "final_usage": m.final_usage(), "running_cost": m.running_cost,
          "output_tokens": m.output_tokens_counted, "checkpoint": m.checkpoint(), "bounds": bounds}
    return out, st


TEXTS = ["Hello", " there", ", friend", "!", "", " caf\u00e9", " \u4f60\u597d", " \U0001F600\U0001F680", ' say "hi"',
         " back\\slash", " tab\there", " line\nend", " \u2028sep", " }],\"usage\":null", " \x7f", " \"usage\":{\"x\":1}",
         ' "content":"x"', " obfuscation", " data: [DONE]"]


def random_stream(rng: random.Random, order: str = "openai") -> list[bytes]:
    pad = rng.choice([None, "ab12", "X"])
    spaced = rng.random() < 0.3
    usage_mode = rng.choice(["null", "null", "absent"])
    chunks = [chunk({"role": "assistant", "content": "", "refusal": None}, pad=pad, usage=usage_mode)]
    for _ in range(rng.randint(0, 30)):
        r = rng.random()
        pad_i = pad if pad is None else "".join(rng.choice("aZ09-_}]\u00e9") for _ in range(rng.randint(0, 12)))
        if order != "openai" and r < 0.7:
            if r < 0.1:  # a text that is not UTF-8 (the parser decodes it with replacement characters),
                # or holds a raw control character (not JSON: a parse error, nothing counted)
                c = chunk({"content": "@@"}, pad=pad_i, usage=usage_mode, spaced=spaced, order=order)
                chunks.append(c.replace(b"@@", rng.choice([b"\xff", b"a\xc3", b"\xe4\xbd", b"a\x01b", b"\x1f"])))
            else:
                # (and texts JSON escapes: tabs, control characters)
                chunks.append(chunk({"content": rng.choice(TEXTS + ["\t\t\t\t\t", " \x01\x02\x03x"])}, pad=pad_i,
                                    usage=usage_mode, spaced=spaced, order=order))
        elif r < 0.7:
            chunks.append(chunk({"content": rng.choice(TEXTS)}, pad=pad_i, usage=usage_mode, spaced=spaced))
        elif r < 0.75:
            chunks.append(chunk({"content": rng.choice(TEXTS)}, index=1, pad=pad_i, usage=usage_mode))
        elif r < 0.8:
            chunks.append(chunk({"content": rng.choice(TEXTS)}, model="gpt-4o-other", pad=pad_i, usage=usage_mode))
        elif r < 0.85:
            chunks.append(chunk({"content": rng.choice(TEXTS)}, tier=rng.choice(["flex", "priority", "default"]),
                                pad=pad_i, usage=usage_mode))
        elif r < 0.9:
            chunks.append(chunk({"refusal": rng.choice(TEXTS)}, pad=pad_i, usage=usage_mode))
        elif r < 0.93:
            chunks.append(chunk({"content": "x"}, pad=pad_i, usage=USAGE))  # a running usage
        elif r < 0.96:
            # a padding that needs unescaping, or odd bytes: parsed
            chunks.append(chunk({"content": "y"}, pad='q"\\', usage=usage_mode))
        else:
            chunks.append(b": keep-alive\n\n")
    chunks.append(chunk({}, finish="stop", pad=pad, usage=usage_mode))
    if usage_mode == "null":
        chunks.append(chunk({}, choices=[], usage=USAGE, pad=pad))
    chunks.append(DONE)
    return chunks


@pytest.mark.parametrize("seed", range(300))
def test_templated_chunks_give_the_same_bytes_and_state_as_parsing_each(seed):
    rng = random.Random(seed)
    chunks = random_stream(rng)
    hide = rng.random() < 0.7
    reservation = rng.choice(["1", "0.0003", "0.00026", "0.0002600001", "0.00027"])
    assert run(meter(hide=hide, reservation=reservation), chunks) == \
        run(meter(hide=hide, reservation=reservation, templates=False), chunks)


@pytest.mark.parametrize("order", ["pad_first", "usage_first", "openai"])
@pytest.mark.parametrize("seed", range(100))
def test_other_layouts_and_bad_utf8_give_the_same_as_parsing(seed, order):
    """The padding before ``"usage": null`` (the member then lies after it), ``"usage": null``
    first (not where a whole chunk's cut is learnt: such chunks are parsed), texts that are not
    UTF-8: the same bytes and state as parsing every chunk, whole and cut anywhere."""
    rng = random.Random(20_000 + seed)
    chunks = random_stream(rng, order)
    hide = rng.random() < 0.7
    reservation = rng.choice(["1", "0.0003", "0.00026", "0.00027"])
    assert run(meter(hide=hide, reservation=reservation), chunks) == \
        run(meter(hide=hide, reservation=reservation, templates=False), chunks)
    stream = b"".join(chunks)
    cuts = sorted(rng.sample(range(1, len(stream)), min(len(stream) - 1, rng.randint(1, 40))))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]
    got_out, got = run(meter(hide=hide), pieces)
    want_out, want = run(meter(hide=hide, templates=False), pieces)
    assert b"".join(got_out) == b"".join(want_out) and got == want


@pytest.mark.parametrize("hide", [True, False])
@pytest.mark.parametrize("order", ["openai", "pad_first"])
@pytest.mark.parametrize("pad", [True, False])
def test_whole_content_chunks_skip_the_sse_parser(monkeypatch, hide, order, pad):
    """A chunk that is exactly one templated content event is read on its bytes: neither framed
    by the SSE parser nor JSON-decoded, and forwarded without its ``"usage": null`` when hidden."""
    fed = []
    real = metering.SSEParser.feed
    monkeypatch.setattr(metering.SSEParser, "feed", lambda self, c: fed.append(c) or real(self, c))
    texts = [f" tok{k}" for k in range(40)] + [" caf\u00e9", " \u4f60\u597d"]
    chunks = [chunk({"role": "assistant", "content": "", "refusal": None}, order=order)]
    chunks += [chunk({"content": t}, pad=f"p{k % 7}Q" * (k % 3) if pad else None, order=order)
               for k, t in enumerate(texts)]
    chunks += [chunk({}, finish="stop", order=order), chunk({}, choices=[], usage=USAGE, order=order), DONE]
    m = meter(hide=hide)
    out, st = run(m, chunks)
    assert len(fed) <= 5, len(fed)  # role, the first content chunk, finish, usage, [DONE]
    assert st["output_tokens"] == count_text("".join(texts), "gpt-4o")
    assert (b'"usage":null' in b"".join(out)) is not hide
    assert run(meter(hide=hide), chunks) == run(meter(hide=hide, templates=False), chunks)


@pytest.mark.parametrize("seed", range(150))
def test_same_with_templates_however_the_stream_is_cut(seed):
    """Chunks that are not whole events (a templated one split, several in one chunk, a partial
    tail held by the parser) must give what parsing every event gives."""
    rng = random.Random(10_000 + seed)
    stream = b"".join(random_stream(rng))
    hide = rng.random() < 0.7
    cuts = sorted(rng.sample(range(1, len(stream)), min(len(stream) - 1, rng.randint(1, 40))))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]
    got_out, got = run(meter(hide=hide), chunks)
    want_out, want = run(meter(hide=hide, templates=False), chunks)
    assert b"".join(got_out) == b"".join(want_out) and got == want


@pytest.mark.parametrize("spaced", [False, True])  # OpenAI's compact JSON, and json.dumps's default
@pytest.mark.parametrize("pad", [True, False])
def test_content_chunks_skip_the_json_scanner(monkeypatch, spaced, pad):
    """The point of the template: after the first plain content chunk, none is JSON-decoded."""
    scans = []
    real = metering._scan_json
    monkeypatch.setattr(metering, "_scan_json", lambda s, i: scans.append(s) or real(s, i))
    chunks = [chunk({"role": "assistant", "content": "", "refusal": None}, spaced=spaced)]
    chunks += [chunk({"content": f" tok{k}"}, pad="p" * (k % 7) if pad else None, spaced=spaced) for k in range(50)]
    chunks += [chunk({}, finish="stop", spaced=spaced), chunk({}, choices=[], usage=USAGE, spaced=spaced), DONE]
    m = meter()
    out, st = run(m, chunks)
    assert len(scans) <= 5, len(scans)  # role, the first content chunk, finish, usage ([DONE] is not scanned)
    assert st["output_tokens"] == count_text("".join(f" tok{k}" for k in range(50)), "gpt-4o")
    assert b'"usage":null' not in b"".join(out) and st["usage_hidden"]


def test_a_changed_layout_is_parsed(monkeypatch):
    scans = []
    real = metering._scan_json
    monkeypatch.setattr(metering, "_scan_json", lambda s, i: scans.append(s) or real(s, i))
    m = meter()
    run(m, [chunk({"content": "a"}), chunk({"content": "b"}, spaced=True), chunk({"content": "c"}, model="gpt-4o-x"),
            chunk({"content": "d"})])
    assert len(scans) == 3 and m.events == 4 and m.output_tokens_counted == count_text("abcd", "gpt-4o")
    assert m.model_reported == "gpt-4o-2024-08-06"  # the last chunk's model, from the template


CAP_TEXTS = ["\U0001F600", "\U0001F9D1\u200D\U0001F680", "\u4f60", " \u0416\u0436", "\U00010348", "a", " the",
             "\u00e9\u00e8", "\u0e01\u0e32", "\U0001F1FA\U0001F1F8"]


@pytest.mark.parametrize("seed", range(60))
def test_cut_off_stays_exact_at_the_cap_with_templated_chunks(seed):
    """Texts of many tokens per character (emoji, rare scripts): a bound that counted characters,
    or anything under the exact count, would let the stream run past its cap. The meter must cut
    at the first event whose text so far reaches the exact token threshold, and not before."""
    rng = random.Random(seed)
    texts = ["a"] + [rng.choice(CAP_TEXTS) * rng.randint(1, 3) for _ in range(60)]  # "a": a plain chunk first
    # a reservation a few tokens above the input's cost: the cap falls inside the stream
    extra = D(rng.randint(5, 60)) * PRICE.rates.output / 1_000_000
    reservation = D(100) * PRICE.rates.input / 1_000_000 + extra
    threshold = output_threshold(PRICE, Usage(input_tokens=100), None, reservation)
    m = StreamMeter("chat", PRICE, "gpt-4o", 100, reservation, True)
    m.feed(chunk({"role": "assistant", "content": "", "refusal": None}))
    seen = ""
    for i, t in enumerate(texts):
        seen += t
        out = m.feed(chunk({"content": t}, pad="z" * (i % 5)))
        exact = count_text(seen, "gpt-4o")
        if exact >= threshold:
            assert m.cut, (i, exact, threshold)
            assert b"budget_exceeded" in out[0]
            break
        assert not m.cut, (i, exact, threshold)
    else:
        pytest.fail("the cap was never reached")
    assert m._tpl is not None  # the templated path was the one tested


def same(a: dict, b: dict) -> bool:
    """The same state at the end (the streams were cut into different chunks: ``bounds`` differ)."""
    return {k: v for k, v in a.items() if k != "bounds"} == {k: v for k, v in b.items() if k != "bounds"}


@pytest.mark.parametrize("hide", [True, False])
@pytest.mark.parametrize("cut", [None, 3, 9])
def test_a_whole_done_chunk_is_the_same_as_a_parsed_one(monkeypatch, hide, cut):
    """``data: [DONE]`` as a chunk of its own is not framed by the parser, with the same bytes and
    state as when it arrives split (framed by the parser), after a partial event, or without a
    template learnt."""
    fed = []
    real = metering.SSEParser.feed
    monkeypatch.setattr(metering.SSEParser, "feed", lambda self, c: fed.append(c) or real(self, c))
    body = [chunk({"role": "assistant", "content": "", "refusal": None}), chunk({"content": "Hi"}),
            chunk({"content": " there"}), chunk({}, finish="stop"), chunk({}, choices=[], usage=USAGE)]
    whole = run(meter(hide=hide), body + [DONE])
    assert whole[1]["done"] and whole[0][-2] == DONE
    assert DONE not in fed
    if cut is not None:  # [DONE] split in two: parsed
        split = run(meter(hide=hide), body + [DONE[:cut], DONE[cut:]])
        assert b"".join(split[0]) == b"".join(whole[0]) and same(split[1], whole[1])
    # behind a partial event (the parser holds bytes): parsed, same result as a whole stream
    tail = body[-1]
    held = run(meter(hide=hide), body[:-1] + [tail[:20], tail[20:] + DONE])
    assert b"".join(held[0]) == b"".join(whole[0]) and same(held[1], whole[1])
    assert run(meter(hide=hide, templates=False), body + [DONE]) == whole
    # right after an event that lacks its blank line, [DONE] is a second data line of that event
    glued = run(meter(hide=hide), body[:-1] + [tail[:-1], DONE])
    parsed = run(meter(hide=hide), body[:-1] + [tail[:-1], DONE[:3], DONE[3:]])
    assert b"".join(glued[0]) == b"".join(parsed[0]) and same(glued[1], parsed[1]) and not glued[1]["done"]
