"""The write-ahead log's framing: intact records read back, a torn or damaged tail is ignored."""

import zlib

import pytest

from pouch_addon.ledger_wal import HEADER_SIZE, RecordLog, frame, unframe


def test_records_read_back_in_order(tmp_path):
    log = RecordLog(tmp_path / "ledger.wal")
    assert log.read() == ([], 0, 0)
    size = log.append([b'{"a":1}', b""])
    assert log.append([b'{"b":2}']) > size
    records, end, total = log.read()
    assert records == [b'{"a":1}', b"", b'{"b":2}'] and end == total
    assert log.read(size)[0] == [b'{"b":2}']


def test_a_torn_final_record_is_ignored_at_every_cut(tmp_path):
    whole = frame(b'{"first":true}')
    last = frame(b'{"second":"x' + b"y" * 40 + b'"}')
    data = whole + last
    for cut in range(len(whole), len(data)):
        records, end = unframe(data[:cut])
        assert (records, end) == ([b'{"first":true}'], len(whole))
    assert unframe(data)[0][-1].startswith(b'{"second"')


@pytest.mark.parametrize("where", range(HEADER_SIZE + 5))
def test_a_damaged_record_stops_the_read(where):
    first, second = frame(b"hello"), frame(b"world")
    data = bytearray(first + second)
    data[len(first) + where] ^= 0x40
    records, end = unframe(bytes(data))
    assert (records, end) == ([b"hello"], len(first))


def test_a_huge_length_field_is_damage_not_a_record():
    data = (2**31).to_bytes(4, "big") + zlib.crc32(b"").to_bytes(4, "big")
    assert unframe(data) == ([], 0)


def test_truncate_cuts_a_torn_tail_and_appends_continue(tmp_path):
    log = RecordLog(tmp_path / "ledger.wal", durable=False)
    log.append([b"one"])
    with open(log.path, "ab") as fh:
        fh.write(frame(b"two")[:-1])  # a writer killed mid-append
    records, end, size = log.read()
    assert records == [b"one"] and end < size
    log.truncate(end)
    log.append([b"three"])
    assert log.read()[0] == [b"one", b"three"]
    log.truncate()
    assert log.read() == ([], 0, 0)


def test_the_kept_descriptor_follows_truncation_and_replacement(tmp_path):
    log = RecordLog(tmp_path / "ledger.wal", durable=False)
    log.append([b"one"], ino=log.stat()[0])
    RecordLog(log.path).truncate()  # another process's snapshot emptied the log
    log.append([b"two"], ino=log.stat()[0])
    assert log.read()[0] == [b"two"]  # O_APPEND: at the (new) end, no hole
    log.path.rename(tmp_path / "set-aside")  # the log was replaced (ledger restore)
    log.append([b"three"], ino=log.stat()[0])
    assert log.read()[0] == [b"three"]
    log.close()
