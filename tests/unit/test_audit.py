"""The hash-chained audit log: appends, verification, tamper and truncation detection, redaction."""

import hashlib
import json
import stat
from decimal import Decimal as D
from pathlib import Path

import pytest

from pouch_addon.audit import GENESIS, AuditError, AuditLog, entry_hash, redact
from pouch_addon.vault import fingerprint

OPENAI = "sk-proj-Zx81kLmQ93hTvBcW7eRgPqYs0aJdNf4u"
T0 = 1795392000.0  # 2026-11-23T00:00:00Z


@pytest.fixture
def log(tmp_path) -> AuditLog:
    log = AuditLog(tmp_path / "home" / "audit.jsonl")
    for i, action in enumerate(["key.add", "wallet.create", "wallet.period", "budget.set"]):
        log.append(action, {"n": i}, actor="alice", now=T0 + i)
    return log


def lines(log: AuditLog) -> list[str]:
    return log.path.read_text().splitlines(keepends=True)


def write_lines(log: AuditLog, content: list[str]) -> None:
    log.path.write_text("".join(content))


def rehash(line: str, **changes) -> str:
    entry = json.loads(line)
    entry.update(changes)
    entry["hash"] = entry_hash(entry)
    return json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n"


# -- appending -------------------------------------------------------------------------------------
def test_entries_are_chained(log):
    entries = log.entries()
    assert [e["seq"] for e in entries] == [1, 2, 3, 4]
    assert [e["action"] for e in entries] == ["key.add", "wallet.create", "wallet.period", "budget.set"]
    assert entries[0]["prev"] == GENESIS == "0" * 64
    for before, after in zip(entries, entries[1:]):
        assert after["prev"] == before["hash"]
    first = entries[0]
    assert set(first) == {"seq", "ts", "time", "actor", "action", "details", "prev", "hash"}
    assert first["ts"] == T0 and first["time"] == "2026-11-23T00:00:00.000Z"
    assert first["actor"] == "alice" and first["details"] == {"n": 0}
    body = {k: v for k, v in first.items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    assert first["hash"] == hashlib.sha256(canonical).hexdigest()
    assert log.verify() == []


def test_append_returns_the_entry_and_updates_the_head(log):
    entry = log.append("key.remove", {"name": "openai"}, actor="bob", now=T0 + 10)
    assert entry == log.entries()[-1]
    assert entry["seq"] == 5
    assert json.loads(log.head_path.read_text()) == {"count": 5, "hash": entry["hash"]}
    assert log.head_path.name == "audit.head"


def test_files_are_private(log):
    assert stat.S_IMODE(log.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(log.head_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(log.path.parent.stat().st_mode) == 0o700


def test_default_actor_and_clock(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    entry = log.append("x")
    assert entry["actor"] and isinstance(entry["ts"], float) and entry["details"] == {}


def test_decimal_details_are_stored_exactly(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    entry = log.append("budget.set", {"amount": D("12.500000"), "path": Path("/x")}, now=T0)
    assert entry["details"] == {"amount": "12.5", "path": "/x"}
    assert log.verify() == []
    with pytest.raises(TypeError):
        log.append("bad", {"x": object()})


def test_an_empty_log_verifies(tmp_path):
    assert AuditLog(tmp_path / "audit.jsonl").verify() == []
    assert AuditLog(tmp_path / "audit.jsonl").entries() == []


# -- verification ------------------------------------------------------------------------------------
def test_edited_field_is_detected(log):
    content = lines(log)
    content[1] = content[1].replace('"actor":"alice"', '"actor":"mallory"')
    write_lines(log, content)
    assert log.verify() == ["line 2 (seq 2): content does not match its hash (entry edited)"]


def test_edited_and_rehashed_entry_breaks_the_chain_after_it(log):
    content = lines(log)
    content[1] = rehash(content[1], details={"n": 99})
    write_lines(log, content)
    assert log.verify() == [
        "line 3 (seq 3): does not chain to the entry before it (one of them was edited or replaced)"
    ]


def test_removed_middle_entry_is_detected(log):
    content = lines(log)
    del content[1]
    write_lines(log, content)
    assert log.verify() == ["line 2: seq 3 follows seq 1 (entries missing or out of order)"]


def test_removed_last_entry_is_detected_via_the_head(log):
    write_lines(log, lines(log)[:-1])
    assert log.verify() == [
        "the log ends at seq 3 but audit.head records 4 entries (entries were removed from the end)"
    ]


def test_removed_everything_is_detected_via_the_head(log):
    log.path.unlink()
    assert log.verify() == [
        "the log ends at seq 0 but audit.head records 4 entries (entries were removed from the end)"
    ]


def test_swapped_pair_is_detected(log):
    content = lines(log)
    content[1], content[2] = content[2], content[1]
    write_lines(log, content)
    assert log.verify() == [
        "line 2: seq 3 follows seq 1 (entries missing or out of order)",
        "line 3: seq 2 follows seq 3 (entries missing or out of order)",
        "line 4: seq 4 follows seq 2 (entries missing or out of order)",
    ]


def test_torn_last_line_is_reported_clearly(log):
    with open(log.path, "a") as fh:
        fh.write('{"seq":5,"ts":')
    assert log.verify() == [
        "line 5: torn entry at the end of the file (14 bytes without a newline; a write was interrupted)"
    ]
    assert len(log.entries()) == 4


def test_garbage_line_is_reported(log):
    content = lines(log)
    content[2] = "not json\n"
    write_lines(log, content)
    assert log.verify() == [
        "line 3: not a valid audit entry (edited or damaged)",
    ]


def test_rewritten_last_entry_does_not_match_the_head(log):
    content = lines(log)
    content[-1] = rehash(content[-1], action="budget.add")
    write_lines(log, content)
    assert log.verify() == ["the log's last entry (seq 4) does not match audit.head (the log was rewritten)"]


def test_missing_or_damaged_head(log):
    log.head_path.write_text("{")
    assert log.verify() == ["audit.head is damaged"]
    log.head_path.unlink()
    assert log.verify() == ["audit.head is missing: removal of the last entries cannot be detected"]


def test_crash_between_line_and_head_is_accepted(log):
    head_before = log.head_path.read_bytes()
    log.append("wallet.delete", {}, actor="alice", now=T0 + 20)
    log.head_path.write_bytes(head_before)  # as if killed before the head was written
    assert log.verify() == []
    entry = log.append("wallet.create", {}, actor="alice", now=T0 + 30)
    assert entry["seq"] == 6
    assert log.verify() == []


# -- append safety -----------------------------------------------------------------------------------
def test_append_cuts_a_torn_tail_from_a_killed_writer(log):
    with open(log.path, "a") as fh:
        fh.write('{"seq":5,"ts":17')
    entry = log.append("key.add", {"name": "x"}, actor="alice", now=T0 + 40)
    assert entry["seq"] == 5
    assert log.verify() == []
    assert [e["seq"] for e in log.entries()] == [1, 2, 3, 4, 5]


def test_append_refuses_after_truncation(log):
    write_lines(log, lines(log)[:-2])
    with pytest.raises(AuditError) as err:
        log.append("key.add", {}, actor="mallory")
    assert str(err.value) == (
        f"refusing to append to {log.path}: the log ends at seq 2 but audit.head records 4 entries "
        "(entries were removed from the end); run `pouch audit verify`"
    )
    assert len(log.entries()) == 2  # nothing written


def test_append_refuses_without_a_head(log):
    log.head_path.unlink()
    with pytest.raises(AuditError, match="audit.head is missing"):
        log.append("key.add", {})


def test_append_refuses_on_a_damaged_last_line(log):
    content = lines(log)
    content[-1] = "garbage\n"
    write_lines(log, content)
    with pytest.raises(AuditError, match="the last entry of .* is damaged"):
        log.append("key.add", {})


def test_append_finds_the_tail_of_a_large_log(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    big = "x" * 10_000  # entries larger than the first tail read
    for i in range(3):
        log.append("note", {"text": big, "i": i}, actor="a", now=T0 + i)
    for i in range(200):
        log.append("note", {"i": i}, actor="a", now=T0 + 10 + i)
    log.append("note", {"text": big}, actor="a", now=T0 + 500)
    assert log.append("end", {}, actor="a", now=T0 + 501)["seq"] == 205
    assert log.verify() == []


# -- redaction ---------------------------------------------------------------------------------------
def test_redact_replaces_secret_named_values_with_fingerprints():
    details = {
        "name": "openai",
        "key_name": "openai-prod",
        "api_key": OPENAI,
        "accessToken": "tok_0123456789abcdefghij",
        "secret": "hunter2",
        "new_passphrase": "correct horse",
        "Authorization": "Bearer abcdefghijklmnopqrstuvwxyz",
        "max_tokens": 4096,
        "key_hash": "ab" * 32,
        "nested": {"virtual_key": "pk-pouch-" + "A" * 32, "items": [{"password": "p4ssw0rd!"}]},
        "note": "rotated from " + OPENAI,
        "raw": OPENAI,
    }
    out = redact(details)
    assert out == {
        "name": "openai",
        "key_name": "openai-prod",
        "api_key": fingerprint(OPENAI),
        "accessToken": fingerprint("tok_0123456789abcdefghij"),
        "secret": fingerprint("hunter2"),
        "new_passphrase": fingerprint("correct horse"),
        "Authorization": fingerprint("Bearer abcdefghijklmnopqrstuvwxyz"),
        "max_tokens": 4096,
        "key_hash": "ab" * 32,
        "nested": {
            "virtual_key": fingerprint("pk-pouch-" + "A" * 32),
            "items": [{"password": fingerprint("p4ssw0rd!")}],
        },
        "note": "rotated from " + OPENAI,  # free text is not scanned: pass fingerprints yourself
        "raw": fingerprint(OPENAI),          # a bare key-looking value is caught anywhere
    }
    assert details["api_key"] == OPENAI  # the input is not modified


def test_redact_is_idempotent():
    once = redact({"api_key": OPENAI, "token": "x" * 30})
    assert redact(once) == once


def test_append_redacts_and_no_secret_reaches_the_disk(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    entry = log.append("key.add", {"name": "openai", "key": OPENAI}, actor="alice", now=T0)
    assert entry["details"] == {"name": "openai", "key": fingerprint(OPENAI)}
    raw = log.path.read_text() + log.head_path.read_text()
    assert OPENAI not in raw and OPENAI[:-4] not in raw


def _append_many(path: str, who: str, n: int) -> None:
    log = AuditLog(path)
    for i in range(n):
        log.append("note", {"i": i}, actor=who)


def test_concurrent_appenders_keep_one_chain(tmp_path):
    import multiprocessing

    path = str(tmp_path / "audit.jsonl")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(path, f"p{k}", 20)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    log = AuditLog(path)
    assert [e["seq"] for e in log.entries()] == list(range(1, 81))
    assert sorted(e["actor"] for e in log.entries()).count("p3") == 20
    assert log.verify() == []
