"""The alert rules (pouch_addon/alerts.py): each threshold fires once per crossing per period."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from pouch_addon.alerts import (
    DEFAULT_THRESHOLDS, AlertConfig, AlertState, SpendView, block_alert, once, parse_thresholds, spend_alerts,
)
from pouch_addon.alerts import Alert

T = DEFAULT_THRESHOLDS


def view(spent: str, budget: str = "10", scope: str = "global", window: str = "total") -> SpendView:
    return SpendView(scope, window, D(spent), D(budget))


def fired(state: AlertState, spent: str, **kw) -> list[int | None]:
    return [a.threshold for a in spend_alerts(state, view(spent, **kw), T, 0.0)]


def test_each_threshold_fires_once_per_crossing():
    st = AlertState()
    assert fired(st, "4.99") == []
    assert fired(st, "5") == [50]  # reaching it is crossing it
    assert fired(st, "6") == []  # still above: quiet
    assert fired(st, "8.5") == [80]
    assert fired(st, "9.5") == [95]
    assert fired(st, "10") == [100]
    assert fired(st, "10.2") == []


def test_one_settle_over_several_thresholds_sends_one_alert_naming_the_highest():
    st = AlertState()
    alerts = spend_alerts(st, view("9.6"), T, 0.0)
    assert [a.threshold for a in alerts] == [95]
    assert "95% spent" in alerts[0].message and "$9.60 of $10.00" in alerts[0].message
    assert fired(st, "9.9") == []  # 50 and 80 counted as fired too


def test_a_top_up_rearms_what_the_spend_fell_below():
    st = AlertState()
    fired(st, "8.5")  # 80
    # budget raised from 10 to 20: 8.5 is 42.5 %, below 50 and 80: both re-armed
    assert spend_alerts(st, view("8.5", "20"), T, 0.0) == []
    assert fired(st, "10", budget="20") == [50]
    assert fired(st, "16", budget="20") == [80]


def test_a_new_period_rearms_every_threshold():
    st = AlertState()
    assert fired(st, "6", scope="wallet:a", window="2026-12-05") == [50]
    assert fired(st, "6", scope="wallet:a", window="2026-12-05") == []
    assert fired(st, "6", scope="wallet:a", window="2026-12-06") == [50]


def test_scopes_are_independent_and_no_budget_alerts_nothing():
    st = AlertState()
    assert fired(st, "5", scope="wallet:a") == [50]
    assert fired(st, "5", scope="wallet:b") == [50]
    assert fired(st, "5") == [50]
    assert spend_alerts(st, view("1", "0"), T, 0.0) == []


def test_state_survives_a_restart():
    st = AlertState()
    fired(st, "8.5")
    block_alert(st, None, None, "no money", 86400.0 * 3)
    once(st, "wallet_expired:a:1", Alert("wallet_expired", "wallet:a", "x", 0.0))
    again = AlertState.loads(__import__("json").dumps(st.to_json()))
    assert fired(again, "9") == []  # nothing fires twice across a restart
    assert block_alert(again, None, None, "no money", 86400.0 * 3 + 5) == []
    assert once(again, "wallet_expired:a:1", Alert("wallet_expired", "wallet:a", "x", 0.0)) == []
    assert fired(again, "9.5") == [95]


def test_first_402_once_per_period_and_does_not_disturb_thresholds():
    st = AlertState()
    fired(st, "10")
    day = 86400.0 * 10
    assert [a.kind for a in block_alert(st, None, None, "budget exceeded", day)] == ["blocked"]
    assert block_alert(st, None, None, "budget exceeded", day + 60) == []
    assert fired(st, "10.1") == []  # the global thresholds' window is untouched
    assert len(block_alert(st, None, None, "budget exceeded", day + 86400)) == 1  # next UTC day
    assert len(block_alert(st, "a", "2026-12-06", "wallet", day)) == 1
    assert block_alert(st, "a", "2026-12-06", "wallet", day) == []
    assert len(block_alert(st, "a", "2026-12-07", "wallet", day)) == 1


def test_alert_json_has_a_text_field_slack_and_discord_accept():
    a = spend_alerts(AlertState(), view("5"), T, 1796515200.0)[0]
    j = a.to_json()
    assert j["text"] == a.message and j["content"] == a.message
    assert j["threshold_pct"] == 50 and j["spent_usd"] == "5" and j["budget_usd"] == "10"
    assert j["time"] == "2026-12-06T00:00:00Z"


def test_recent_is_bounded():
    st = AlertState()
    for i in range(50):
        st.remember([Alert("test", "global", f"m{i}", float(i))])
    assert len(st.recent) == 20 and st.recent[-1]["text"] == "m49"


@pytest.mark.parametrize("text,want", [("50,80,95,100", (50, 80, 95, 100)), ("90, 50%", (50, 90)), ("off", ())])
def test_parse_thresholds(text, want):
    assert parse_thresholds(text) == want


@pytest.mark.parametrize("text", ["0", "fifty", "50,1001"])
def test_parse_thresholds_refuses_nonsense(text):
    with pytest.raises(ValueError):
        parse_thresholds(text)


def test_config_per_wallet_thresholds_round_trip():
    cfg = AlertConfig(wallets={"a": (90,)}, webhook="http://127.0.0.1:1/x")
    back = AlertConfig.from_json(cfg.to_json())
    assert back == cfg
    assert back.thresholds_for("wallet:a") == (90,) and back.thresholds_for("wallet:b") == T
    assert back.thresholds_for("global") == T
