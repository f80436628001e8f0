"""Reading a ring whose data pages are mapped once."""
from __future__ import annotations

from agent.capture.ringbuf import read_records


def test_a_record_wrapping_around_the_end_is_read_in_two_pieces():
    size, base = 64, 16
    data = bytearray(base + size)
    record = bytes(range(1, 21))        # 20 bytes from offset 48: the last 4 wrap
    consumer = 3 * size + 40            # positions only grow; offset 40 in the ring
    data[base + 40:base + 44] = len(record).to_bytes(4, "little")
    data[base + 48:base + 64] = record[:16]
    data[base:base + 4] = record[16:]
    records, after = read_records(bytes(data), base, size - 1, consumer, consumer + 32, 10)
    assert records == [record] and after == consumer + 32
