"""Reads a BPF ring buffer through its mmapped pages, in batches.

Reading the mapped ring directly is faster than libbpf's ring_buffer__poll
with a cffi callback per record, because the per-record Python->C->Python
round trip disappears (benchmarks/ring_drain.py; figures in
docs/performance.md).

Layout (kernel/bpf/ringbuf.c): page 0 holds the consumer position (ours to
write), page 1 the producer position, then the data pages, which the kernel
offers twice in a row so that a record wrapping around the end reads as one
slice.  The reader maps them once: the kernel maps a ring's pages when the
mapping is made, so a second copy would add the whole ring again to the
agent's resident memory, for the rare record that wraps, which is read in
two pieces instead.  Each record has an 8-byte header: length in the low 30
bits, bit 31 busy (still being written), bit 30 discarded.

The kernel writes most records without waking the reader
(BPF_RB_NO_WAKEUP): readers poll on their own clock, under load every
POLL_INTERVAL_S, at lower rates less often (agent/runtime/pipeline.py).
A wake-up per record cost the traced processes a context switch each, tens
of thousands a second under load; a 50 ms poll is 20 a second, and a 16 MiB
ring holds far more than 50 ms of any load this agent can keep up with
(about 4 MiB at 300k records/s).  Longer polls make bigger batches, and so
less CPU per span (docs/performance.md, "Ring buffer drain").  The records
that need an answer at once wake the reader, and so does the record that
takes the unread bytes past WAKE_AT_FILL of the ring.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import select
import struct

_BUSY = 1 << 31
_DISCARD = 1 << 30
_LENGTH_MASK = _DISCARD - 1
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
POLL_INTERVAL_S = 0.05
# The kernel wakes the readers when a record takes the unread bytes past this
# share of the ring (capture_config.ring_wake_bytes): the drain starts early,
# and the CPU guard (agent/runtime/cpu_guard.py) learns the agent is falling behind.
WAKE_AT_FILL = 1 / 8


class RingFill:
    """How full a ring is, and a wait for the kernel's wake-ups: its two
    position pages (the consumer's writable for the ring's reader only).  A
    process that only watches the ring (the CPU guard) needs no more, and
    must not map the data pages: the kernel maps a ring's pages all at once,
    and a 16 MiB ring would count 32 MiB of resident memory in the watcher
    too."""

    def __init__(self, map_fd: int, size: int, consumer_writable: bool = False):
        page = mmap.PAGESIZE
        self.map_fd = map_fd
        self.size = size
        protection = mmap.PROT_READ | (mmap.PROT_WRITE if consumer_writable else 0)
        self._consumer_position = mmap.mmap(map_fd, page, mmap.MAP_SHARED, protection, offset=0)
        self._producer_position = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ,
                                            offset=page)
        self._epoll = select.epoll()
        # Edge-triggered: a wait returns on the kernel's next wake-up, not at
        # once because records (written without one) are already there.
        self._epoll.register(map_fd, select.EPOLLIN | select.EPOLLET)

    def fill_ratio(self) -> float:
        return (_U64.unpack_from(self._producer_position, 0)[0]
                - _U64.unpack_from(self._consumer_position, 0)[0]) / self.size

    def wait(self, timeout_s: float = POLL_INTERVAL_S) -> None:
        """Until the kernel wakes the ring's readers, or the timeout passes."""
        self._epoll.poll(timeout_s)

    def close(self) -> None:
        self._epoll.close()
        self._consumer_position.close()
        self._producer_position.close()


class RingBuffer(RingFill):
    """The ring's reader: the data pages too, and the consumer position
    writable."""

    def __init__(self, map_fd: int, size: int):
        super().__init__(map_fd, size, consumer_writable=True)
        page = mmap.PAGESIZE
        self._mask = size - 1
        self._data = mmap.mmap(map_fd, page + size, mmap.MAP_SHARED, mmap.PROT_READ,
                               offset=page)
        # One 8-byte store: a bytewise write lets the kernel see a torn
        # position and drop records as if the ring were full.
        self._consumer = ctypes.c_uint64.from_buffer(self._consumer_position)
        self._page = page
        # wake() ends a wait at once (a stop must not wait out a long poll).
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll.register(self._wake_fd, select.EPOLLIN)

    def wake(self) -> None:
        """End the current or next wait() at once; safe in a signal handler,
        even one that comes as the ring closes."""
        try:
            os.eventfd_write(self._wake_fd, 1)
        except OSError:
            pass

    def wait(self, timeout_s: float = POLL_INTERVAL_S) -> None:
        for fd, _ in self._epoll.poll(timeout_s):
            if fd == self._wake_fd:
                try:
                    os.eventfd_read(self._wake_fd)
                except BlockingIOError:
                    pass

    def read_batch(self, max_records: int) -> list[bytes]:
        """Copy out up to max_records committed records, then release them."""
        producer = _U64.unpack_from(self._data, 0)[0]
        out, consumer = read_records(self._data, self._page, self._mask,
                                     self._consumer.value, producer, max_records)
        self._consumer.value = consumer
        return out

    def close(self) -> None:
        del self._consumer      # the mapping under it can close only then
        self._data.close()
        super().close()
        os.close(self._wake_fd)


def read_records(data, base: int, mask: int, consumer: int, producer: int,
                 max_records: int) -> tuple[list[bytes], int]:
    """Records between the consumer and producer positions of a ring whose
    data area (mapped once, mask + 1 bytes) starts at `base` in `data`;
    returns them and the new consumer position.  Stops at a record the
    kernel is still writing."""
    out = []
    append = out.append
    unpack_len = _U32.unpack_from
    end_of_data = base + mask + 1
    while consumer < producer and len(out) < max_records:
        offset = base + (consumer & mask)
        header = unpack_len(data, offset)[0]
        if header & _BUSY:
            break
        length = header & _LENGTH_MASK
        if not header & _DISCARD:
            # Headers are 8-byte aligned and never wrap; a record's data may.
            start = offset + 8
            end = start + length
            if end <= end_of_data:
                append(data[start:end])
            else:
                append(data[start:end_of_data] + data[base:base + end - end_of_data])
        consumer += (length + 8 + 7) & ~7
    return out, consumer


def layout_records(records: list[bytes], size: int, page: int = mmap.PAGESIZE) -> bytes:
    """A ring image holding `records` as the kernel would lay them out
    (producer position first, data from `page` on): for replaying recorded
    events through read_records.  bytes, so that records read from it are
    bytes, as slices of the mapped ring are."""
    data = bytearray(page + size)
    pos = 0
    for record in records:
        step = (len(record) + 8 + 7) & ~7
        if pos + step > size:
            raise ValueError("records do not fit in a ring of that size")
        _U32.pack_into(data, page + pos, len(record))
        data[page + pos + 8:page + pos + 8 + len(record)] = record
        pos += step
    _U64.pack_into(data, 0, pos)
    return bytes(data)
