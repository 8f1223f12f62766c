"""The write-ahead log's framing: intact records read back, a torn or damaged tail is ignored."""

import zlib

import pytest

from pouch_addon.ledger_wal import HEADER_SIZE, PREALLOCATE_CHUNK, PREALLOCATE_LOW, RecordLog, frame, mark, unframe


def test_records_read_back_in_order(tmp_path):
    log = RecordLog(tmp_path / "ledger.wal")
    assert log.read() == ([], 0, 0)
    size = log.append([b'{"a":1}', b"{}"])
    assert log.append([b'{"b":2}']) > size
    records, end, total = log.read()
    assert records == [b'{"a":1}', b"{}", b'{"b":2}'] and end == total
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
    assert log.read()[0] == [b"two"]  # at the (new) end, no hole
    log.path.rename(tmp_path / "set-aside")  # the log was replaced (ledger restore)
    log.append([b"three"], ino=log.stat()[0])
    assert log.read()[0] == [b"three"]
    log.close()


# -- the preallocated log: zeros after the last record are the end ------------------------------
def test_preallocated_zeros_are_the_end_of_the_log_not_empty_records():
    """A zero length field reads as the end (an empty record would frame as 8 zero bytes, and
    crc32 of nothing is 0: the old reader took every 8 zeros for one)."""
    data = frame(b"hello") + frame(b"world") + bytes(4096)
    assert unframe(data) == ([b"hello", b"world"], len(frame(b"hello") + frame(b"world")))
    assert unframe(bytes(PREALLOCATE_CHUNK)) == ([], 0)
    with pytest.raises(ValueError):
        frame(b"")  # so no record can look like the zeros


def test_a_torn_record_followed_by_zeros_is_the_end_at_every_cut():
    whole, last = frame(b'{"first":true}'), frame(b'{"second":"x' + b"y" * 40 + b'"}')
    for cut in range(len(last)):
        data = whole + last[:cut] + bytes(len(last) - cut + 512)  # written in place, partly
        assert unframe(data) == ([b'{"first":true}'], len(whole))


def test_records_go_into_the_preallocated_zeros_without_growing_the_file(tmp_path):
    log = RecordLog(tmp_path / "ledger.wal", durable=False)
    end = log.append([b"one"], ino=log.stat()[0], end=0)
    assert log.preallocate(end, ino=log.stat()[0])
    ino, size = log.stat()
    assert size == end + PREALLOCATE_CHUNK and log.read() == ([b"one"], end, end)  # zeros: no torn tail
    assert not log.appended(end, ino, size)
    before = mark(log.path)
    end2 = log.append([b"two"], ino=ino, end=end)
    assert log.stat() == (ino, size) and log.read() == ([b"one", b"two"], end2, end2)
    assert log.appended(end, ino, size) and not log.appended(end2, ino, size)  # seen by another writer
    assert mark(log.path)[3] == end2 and mark(log.path) != before  # seen by a poller
    assert not log.preallocate(end2, ino=ino)  # enough zeros left
    assert log.preallocate(size - PREALLOCATE_LOW + 1, ino=ino) and log.stat()[1] == size + PREALLOCATE_CHUNK
    log.close()


def test_content_after_a_zero_gap_is_a_torn_tail(tmp_path):
    """A power loss can keep a later record's page and lose an earlier one: the read stops at the
    gap and reports the rest as a torn tail, so the next writer cuts it (else a record of the same
    length written into the gap would bring the stale one after it back)."""
    log = RecordLog(tmp_path / "ledger.wal", durable=False)
    log.path.write_bytes(frame(b"one") + bytes(len(frame(b"two"))) + frame(b"three") + bytes(100))
    records, end, size = log.read()
    assert records == [b"one"] and end == len(frame(b"one")) and size > end
    log.truncate(end)
    assert log.append([b"two"], ino=log.stat()[0], end=end) and log.read()[0] == [b"one", b"two"]
    log.close()
