"""scripts/update_pricing.py: selection, exact conversion, sanity rejection, diff output, CLI."""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from decimal import Decimal as D
from pathlib import Path

import pytest

from pouch_addon.pricing import PriceTable, Usage, cost

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("update_pricing", ROOT / "scripts" / "update_pricing.py")
up = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("update_pricing", up)  # dataclasses look their module up
_spec.loader.exec_module(up)

WHEEL_JSON = Path("/tmp/litellm/litellm/model_prices_and_context_window_backup.json")


def litellm_sample() -> dict:
    """A small LiteLLM-shaped file (per-token floats, as LiteLLM writes them)."""
    return {
        "sample_spec": {"input_cost_per_token": 0.0, "litellm_provider": "one of ...", "mode": "one of ..."},
        "gpt-4o": {
            "litellm_provider": "openai", "mode": "chat", "max_input_tokens": 128000, "max_output_tokens": 16384,
            "input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05, "cache_read_input_token_cost": 1.25e-06,
            "input_cost_per_token_batches": 1.25e-06, "output_cost_per_token_batches": 5e-06,
            "input_cost_per_token_priority": 4.25e-06, "output_cost_per_token_priority": 1.7e-05,
            "cache_read_input_token_cost_priority": 2.125e-06, "supports_vision": True,
            "source": "https://developers.openai.com/api/docs/pricing",
        },
        "gemini/gemini-2.5-pro": {
            "litellm_provider": "gemini", "mode": "chat", "max_input_tokens": 1048576, "max_output_tokens": 65536,
            "input_cost_per_token": 1.25e-06, "output_cost_per_token": 1e-05, "cache_read_input_token_cost": 1.25e-07,
            "input_cost_per_token_above_200k_tokens": 2.5e-06, "output_cost_per_token_above_200k_tokens": 1.5e-05,
            "cache_read_input_token_cost_above_200k_tokens": 2.5e-07,
            "input_cost_per_token_priority": 2.25e-06, "output_cost_per_token_priority": 1.8e-05,
            "input_cost_per_token_above_200k_tokens_priority": 4.5e-06,
            "output_cost_per_token_above_200k_tokens_priority": 2.7e-05,
        },
        "gemini-2.5-pro": {  # a Vertex key with the same bare name: not the Gemini API
            "litellm_provider": "vertex_ai-language-models", "mode": "chat",
            "input_cost_per_token": 9e-06, "output_cost_per_token": 9e-05,
        },
        "claude-opus-4-7": {
            "litellm_provider": "anthropic", "mode": "chat", "max_input_tokens": 1000000, "max_output_tokens": 128000,
            "input_cost_per_token": 5e-06, "output_cost_per_token": 2.5e-05, "cache_read_input_token_cost": 5e-07,
            "cache_creation_input_token_cost": 6.25e-06, "cache_creation_input_token_cost_above_1hr": 1e-05,
            "input_cost_per_token_batches": 2.5e-06, "output_cost_per_token_batches": 1.25e-05,
        },
        "text-embedding-3-small": {
            "litellm_provider": "openai", "mode": "embedding", "max_input_tokens": 8191,
            "input_cost_per_token": 2e-08, "output_cost_per_token": 0.0,
        },
        "gpt-3.5-turbo-instruct": {
            "litellm_provider": "text-completion-openai", "mode": "completion", "max_input_tokens": 8192,
            "max_output_tokens": 4096, "input_cost_per_token": 1.5e-06, "output_cost_per_token": 2e-06,
            "deprecation_date": "2026-09-28",
        },
        "gemini/gemma-3-27b-it": {"litellm_provider": "gemini", "mode": "chat", "input_cost_per_token": 0,
                                  "output_cost_per_token": 0},
        "gpt-audio": {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 2.5e-06,
                      "output_cost_per_token": 1e-05, "input_cost_per_audio_token": 3.2e-05},
        "dall-e-3": {"litellm_provider": "openai", "mode": "image_generation", "output_cost_per_image": 0.04},
        "azure/gpt-4o": {"litellm_provider": "azure", "mode": "chat", "input_cost_per_token": 2.5e-06,
                         "output_cost_per_token": 1e-05},
        "openai/container": {"litellm_provider": "openai", "mode": "chat"},
    }


def build(data: dict, **kw):
    report = up.BuildReport()
    table = up.build_table(data, updated="2030-01-01", report=report, **kw)
    return table, report


# ------------------------------------------------------------------------------------------------
# conversion and selection


@pytest.mark.parametrize("value,expected", [
    (2.5e-06, "2.5"), (1e-05, "10"), (1.875e-06, "1.875"), (5e-09, "0.005"), (0.00015, "150"),
    (2.125e-06, "2.125"), (1.1e-06, "1.1"), (0, "0"), (0.0, "0"), (1.5625e-05, "15.625"), (3e-07, "0.3"),
])
def test_per_million_is_exact(value, expected):
    assert up.per_million(value) == expected


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), True, None, "abc", [1]])
def test_per_million_refuses_non_prices(bad):
    with pytest.raises(ValueError):
        up.per_million(bad)


def test_build_selects_providers_modes_and_strips_gemini_prefix():
    table, report = build(litellm_sample())
    assert sorted(table["models"]) == sorted(
        ["gpt-4o", "gemini-2.5-pro", "claude-opus-4-7", "text-embedding-3-small", "gpt-3.5-turbo-instruct",
         "azure/gpt-4o", *up.EXTRAS])
    assert report.rejected == {}
    assert "gemma-3-27b-it" in report.skipped and "0/0" in report.skipped["gemma-3-27b-it"]
    assert "gpt-audio" in report.skipped and "audio" in report.skipped["gpt-audio"]
    assert "openai/container" not in table["models"] and "dall-e-3" not in table["models"]
    assert table["updated"] == "2030-01-01" and table["tier_multipliers"]["priority"] == "2.5"


def test_build_converts_prices_tiers_and_long_context():
    m = build(litellm_sample())[0]["models"]
    assert m["gpt-4o"] == {
        "provider": "openai", "mode": "chat", "input": "2.5", "cached_input": "1.25", "output": "10",
        "tiers": {"batch": {"input": "1.25", "output": "5"},
                  "priority": {"input": "4.25", "cached_input": "2.125", "output": "17"}},
        "max_input_tokens": 128000, "max_output_tokens": 16384, "encoding": "o200k_base",
    }
    g = m["gemini-2.5-pro"]
    assert g["input"] == "1.25" and "encoding" not in g  # the gemini/ key, not the Vertex one
    assert g["long_context"] == {"threshold": 200000, "input": "2.5", "cached_input": "0.25", "output": "15",
                                 "tiers": {"priority": {"input": "4.5", "output": "27"}}}
    c = m["claude-opus-4-7"]
    assert (c["cache_write"], c["cache_write_1h"], c["tiers"]["batch"]["output"]) == ("6.25", "10", "12.5")
    e = m["text-embedding-3-small"]
    assert (e["input"], e["output"], e["encoding"], e["mode"]) == ("0.02", "0", "cl100k_base", "embedding")
    i = m["gpt-3.5-turbo-instruct"]
    assert (i["provider"], i["mode"], i["deprecation_date"]) == ("openai", "completion", "2026-09-28")
    assert not any(k.startswith("supports_") for entry in m.values() for k in entry)


def test_built_table_loads_and_prices():
    table, _ = build(litellm_sample())
    t = PriceTable(table, "built")
    # Gemini >200k with priority: 250000×4.5 + 1000×27 = 1,152,000
    assert cost(t.resolve("gemini/gemini-2.5-pro"), Usage(input_tokens=250_000, output_tokens=1000), "priority") \
        == D("1.152")
    assert t.resolve("claude-sonnet-4-0").name == "claude-sonnet-4-20250514"  # extra + alias


def test_extras_and_aliases_are_added_with_their_source():
    m = build(litellm_sample())[0]
    for name in ("claude-sonnet-4-20250514", "claude-opus-4-20250514", "claude-3-5-haiku-20241022",
                 "chatgpt-4o-latest", "o1-mini", "gpt-4-32k"):
        assert name in m["models"] and "pouch extra" in m["models"][name]["source"]
        assert not any(k.startswith("_") for k in m["models"][name])
    assert m["aliases"]["claude-sonnet-4-0"] == "claude-sonnet-4-20250514"


def test_an_extra_is_dropped_once_litellm_has_the_model():
    data = litellm_sample()
    data["o1-mini"] = {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 1.1e-06,
                       "output_cost_per_token": 4.4e-06}
    table, report = build(data)
    assert "source" not in table["models"]["o1-mini"]
    assert any("o1-mini" in n and "not used" in n for n in report.notes)


def test_extra_cross_check_warns_when_litellm_disagrees():
    data = litellm_sample()
    data["azure/gpt-4-32k"] = {"litellm_provider": "azure", "mode": "chat", "input_cost_per_token": 7e-05,
                               "output_cost_per_token": 0.00012}
    _, report = build(data)
    assert any("gpt-4-32k" in n and "differs" in n for n in report.notes)


def test_override_applies_only_while_the_upstream_problem_exists():
    data = litellm_sample()
    data["ft:gpt-4o-2024-11-20"] = {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 3.75e-06,
                                    "output_cost_per_token": 1.5e-05, "cache_creation_input_token_cost": 1.875e-06}
    entry = build(data)[0]["models"]["ft:gpt-4o-2024-11-20"]
    assert entry["cached_input"] == "1.875" and "cache_write" not in entry
    fixed = copy.deepcopy(data)
    fixed["ft:gpt-4o-2024-11-20"] = {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 4e-06,
                                     "output_cost_per_token": 1.6e-05, "cache_read_input_token_cost": 2e-06}
    entry = build(fixed)[0]["models"]["ft:gpt-4o-2024-11-20"]
    assert entry["cached_input"] == "2"


# ------------------------------------------------------------------------------------------------
# sanity checks


def ok_entry(**changes):
    entry = {"provider": "openai", "mode": "chat", "input": "2", "cached_input": "1", "output": "8",
             "max_input_tokens": 1000, "max_output_tokens": 100}
    entry.update(changes)
    return entry


def test_a_sane_entry_has_no_problems():
    assert up.sanity_problems(ok_entry()) == []
    assert up.sanity_problems(ok_entry(input="150", cached_input="150", output="600")) == []  # o1-pro
    assert up.sanity_problems({"provider": "openai", "mode": "embedding", "input": "0.02", "output": "0"}) == []


@pytest.mark.parametrize("changes,needle", [
    ({"input": "1001"}, "sanity limit"),
    ({"output": "2500"}, "sanity limit"),
    ({"input": "-1"}, "negative"),
    ({"output": "abc"}, "not a decimal"),
    ({"input": "0", "cached_input": "0", "output": "0"}, "both 0"),
    ({"output": "0.1"}, "tenth"),
    ({"cached_input": "3"}, "cached_input"),
    ({"cache_write": "1"}, "cache_write"),
    ({"tiers": {"batch": {"input": "3", "output": "8"}}}, "tiers.batch.input"),
    ({"tiers": {"priority": {"input": "1", "output": "16"}}}, "tiers.priority.input"),
    ({"tiers": {"priority": {"input": "4", "output": "3000"}}}, "sanity limit"),
    ({"long_context": {"threshold": 200000, "input": "1", "output": "8"}}, "long_context.input"),
    ({"long_context": {"threshold": 0, "input": "4", "output": "16"}}, "threshold"),
    ({"max_output_tokens": -5}, "max_output_tokens"),
    ({"mode": "image_generation"}, "mode"),
])
def test_sanity_problems(changes, needle):
    problems = up.sanity_problems(ok_entry(**changes))
    assert problems and any(needle in p for p in problems), problems


def test_absurd_litellm_entries_are_rejected_and_left_out():
    data = litellm_sample()
    data["gpt-oops"] = {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 0.0025,
                        "output_cost_per_token": 0.01}  # $2500 / $10000 per 1M: a per-1K price pasted in
    data["gpt-neg"] = {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": -1e-06,
                       "output_cost_per_token": 1e-05}
    data["gpt-two-thresholds"] = {
        "litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 1e-06, "output_cost_per_token": 4e-06,
        "input_cost_per_token_above_128k_tokens": 2e-06, "input_cost_per_token_above_256k_tokens": 3e-06}
    data["gpt-reasoning"] = {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 1e-06,
                             "output_cost_per_token": 4e-06, "output_cost_per_reasoning_token": 8e-06}
    table, report = build(data)
    assert set(report.rejected) == {"gpt-oops", "gpt-neg", "gpt-two-thresholds", "gpt-reasoning"}
    assert not set(report.rejected) & set(table["models"])
    assert any("sanity limit" in p for p in report.rejected["gpt-oops"])
    assert any("several long-context thresholds" in p for p in report.rejected["gpt-two-thresholds"])


def test_tool_fees_are_converted_exactly_with_a_per_provider_fallback():
    data = litellm_sample()
    sizes = {"search_context_size_high": 0.03, "search_context_size_low": 0.025, "search_context_size_medium": 0.025}
    data["gpt-4o"]["search_context_cost_per_query"] = sizes
    data["gpt-4o"]["file_search_cost_per_1k_calls"] = 2.5
    data["gpt-3.5-turbo-instruct"]["search_context_cost_per_query"] = {"search_context_size_high": 0.05}
    data["claude-opus-4-7"]["search_context_cost_per_query"] = {"search_context_size_medium": 0.01}
    data["openai/container"]["code_interpreter_cost_per_session"] = 0.03
    data["azure/container"] = {"litellm_provider": "azure", "mode": "chat", "code_interpreter_cost_per_session": 0.9}
    table, report = build(data)
    assert report.rejected == {}
    assert table["models"]["gpt-4o"]["fees"] == {
        "web_search_call": {"high": "0.03", "low": "0.025", "medium": "0.025"}, "file_search_call": "0.0025"}
    assert "fees" not in table["models"]["text-embedding-3-small"]
    assert table["tool_fees"] == {
        "anthropic": {"web_search_call": {"medium": "0.01"}},
        "azure": {"code_interpreter_call": "0.9"},
        "openai": {"code_interpreter_call": "0.03", "file_search_call": "0.0025",
                   "web_search_call": {"high": "0.05", "low": "0.025", "medium": "0.025"}},
    }
    loaded = PriceTable(table)
    assert loaded.call_fee(loaded.resolve("gpt-4o"), "web_search_call", "high") == (D("0.03"), False)
    assert loaded.call_fee(loaded.resolve("gpt-4o"), "code_interpreter_call") == (D("0.03"), True)
    assert any(line.startswith("~ tool_fees.openai.code_interpreter_call") for line in up.diff_tables(build(
        litellm_sample())[0], table))


@pytest.mark.parametrize("fee,needle", [("0", "free tool call"), ("6", "sanity limit"), ("x", "not a decimal")])
def test_tool_fee_sanity(fee, needle):
    problems = up.sanity_problems(ok_entry(fees={"web_search_call": {"medium": fee}}))
    assert problems and any(needle in p for p in problems), problems
    assert up.sanity_problems(ok_entry(fees={"web_search_call": {"medium": "0.01"}, "code_interpreter_call": "0.03"})) == []


# ------------------------------------------------------------------------------------------------
# diff


def test_diff_lists_added_removed_and_changed_with_old_and_new_prices():
    old, _ = build(litellm_sample())
    data = litellm_sample()
    data["gpt-4o"]["output_cost_per_token"] = 1.2e-05
    data["gpt-4o"]["output_cost_per_token_priority"] = 1.8e-05
    del data["text-embedding-3-small"]
    data["gpt-9"] = {"litellm_provider": "openai", "mode": "responses", "input_cost_per_token": 3e-06,
                     "output_cost_per_token": 1.5e-05}
    new, _ = build(data)
    lines = up.diff_tables(old, new)
    assert "~ gpt-4o: output 10 -> 12; tiers.priority.output 17 -> 18" in lines
    assert any(line.startswith("+ gpt-9") and "input 3" in line and "output 15" in line for line in lines)
    assert any(line.startswith("- text-embedding-3-small") for line in lines)
    assert len(lines) == 3


def test_diff_ignores_the_updated_stamp_and_reports_multipliers():
    a, _ = build(litellm_sample())
    b = copy.deepcopy(a)
    b["updated"] = "2031-05-05"
    assert up.diff_tables(a, b) == []
    b["tier_multipliers"]["priority"] = "2"
    assert up.diff_tables(a, b) == ["~ tier_multipliers.priority: 2.5 -> 2"]
    assert up.diff_tables(None, a)[0].startswith("~ tier_multipliers")


# ------------------------------------------------------------------------------------------------
# CLI


def write(path: Path, data) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def test_cli_writes_then_check_is_clean(tmp_path, capsys):
    src = write(tmp_path / "litellm.json", litellm_sample())
    out = tmp_path / "pricing.json"
    assert up.main([src, "--out", str(out), "--updated", "2030-01-01", "--litellm-version", "9.9.9"]) == 0
    table = json.loads(out.read_text())
    assert table["generated_from"] == "litellm 9.9.9 litellm.json" and "gpt-4o" in table["models"]
    PriceTable.load(out)  # loadable
    capsys.readouterr()
    before = out.read_text()
    assert up.main([src, "--out", str(out), "--check", "--litellm-version", "9.9.9"]) == 0
    assert "no price changes" in capsys.readouterr().out
    # a rerun without changes leaves the file (and its `updated` stamp) alone
    assert up.main([src, "--out", str(out), "--litellm-version", "9.9.9"]) == 0
    assert out.read_text() == before


def test_cli_check_reports_changes_and_writes_nothing(tmp_path, capsys):
    src = write(tmp_path / "litellm.json", litellm_sample())
    out = tmp_path / "pricing.json"
    assert up.main([src, "--out", str(out), "--updated", "2030-01-01"]) == 0
    before = out.read_text()
    data = litellm_sample()
    data["gpt-4o"]["input_cost_per_token"] = 3e-06
    src2 = write(tmp_path / "litellm2.json", data)
    capsys.readouterr()
    assert up.main([src2, "--out", str(out), "--check"]) == 1
    assert "~ gpt-4o: input 2.5 -> 3" in capsys.readouterr().out
    assert out.read_text() == before


def test_cli_refuses_to_write_with_rejects_unless_allowed(tmp_path, capsys):
    data = litellm_sample()
    data["gpt-oops"] = {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 0.0025,
                        "output_cost_per_token": 0.01}
    src = write(tmp_path / "litellm.json", data)
    out = tmp_path / "pricing.json"
    assert up.main([src, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "REJECTED gpt-oops" in err and not out.exists()
    assert up.main([src, "--out", str(out), "--check"]) == 1
    assert up.main([src, "--out", str(out), "--allow-rejects"]) == 0
    assert "gpt-oops" not in json.loads(out.read_text())["models"]


def test_dumped_table_has_one_line_per_model(tmp_path):
    table, _ = build(litellm_sample())
    text = up.dumps_table(table)
    assert json.loads(text) == table
    model_lines = [line for line in text.splitlines() if line.startswith("    \"")]
    assert len(model_lines) == len(table["models"])


# ------------------------------------------------------------------------------------------------
# The committed table


def test_committed_table_passes_the_sanity_checks():
    data = json.loads((ROOT / "assets" / "pricing.json").read_text())
    assert data["generated_from"].startswith("litellm 1.109.1")
    for name, entry in data["models"].items():
        assert up.sanity_problems(entry) == [], name
        assert entry["provider"] in ("openai", "anthropic", "gemini", *(p for p, _ in up.COMPAT_PREFIXES.values()))
        compat = dict(up.COMPAT_PREFIXES.values()).get(entry["provider"])
        assert compat is None or name.startswith(compat), name  # a compatible host's name keeps its prefix
    assert set(data["tier_multipliers"]) == set(up.TIER_MULTIPLIERS)


@pytest.mark.skipif(not WHEEL_JSON.exists(), reason="LiteLLM 1.109.1 price file not extracted")
def test_committed_table_is_what_the_script_generates():
    litellm = json.loads(WHEEL_JSON.read_text())
    committed = json.loads((ROOT / "assets" / "pricing.json").read_text())
    report = up.BuildReport()
    new = up.build_table(litellm, report=report)
    # the few entries left out are OpenAI-compatible hosts' (e.g. a 0 embedding price): unknown there
    assert all(name.startswith(tuple(pre for _, pre in up.COMPAT_PREFIXES.values())) for name in report.rejected)
    assert up.diff_tables(committed, new) == []


def test_compatible_hosts_keep_their_prefixed_keys_and_deepseek_cache_prices():
    """OpenAI-compatible hosts' entries keep LiteLLM's prefixed key (a name prices only on its own
    host); keys without the prefix are left out; DeepSeek's cache-hit price is its cached input
    and its 0 cache-write price is dropped (writes then price as input, never at $0)."""
    data = {
        "deepseek/deepseek-chat": {"litellm_provider": "deepseek", "mode": "chat", "input_cost_per_token": 2.8e-07,
                                   "output_cost_per_token": 4.2e-07, "input_cost_per_token_cache_hit": 2.8e-08,
                                   "cache_creation_input_token_cost": 0.0, "max_input_tokens": 131072},
        "deepseek-chat": {"litellm_provider": "deepseek", "mode": "chat", "input_cost_per_token": 2.8e-07,
                          "output_cost_per_token": 4.2e-07},
        "groq/llama-3.1-8b-instant": {"litellm_provider": "groq", "mode": "chat", "input_cost_per_token": 5e-08,
                                      "output_cost_per_token": 8e-08},
        "fireworks-ai-up-to-4b": {"litellm_provider": "fireworks_ai", "mode": "chat",
                                  "input_cost_per_token": 2e-07, "output_cost_per_token": 2e-07},
        "groq/whisper-large-v3": {"litellm_provider": "groq", "mode": "audio_transcription",
                                  "input_cost_per_second": 3e-05},
    }
    table, report = build(data)
    compat = {k: v for k, v in table["models"].items() if k not in up.EXTRAS}
    assert sorted(compat) == ["deepseek/deepseek-chat", "groq/llama-3.1-8b-instant"]
    ds = compat["deepseek/deepseek-chat"]
    assert ds["provider"] == "deepseek" and ds["cached_input"] == "0.028" and "cache_write" not in ds
    assert compat["groq/llama-3.1-8b-instant"]["provider"] == "groq" and report.rejected == {}
