"""Server exchanges that wait briefly for their client's request.

The same-node link (agent/spans/context.py) makes a server span the child
of the client span on the mirrored connection, when that client's request
was seen first.  A plaintext write is recorded at the syscall's exit, before
the kernel returns to the writer.  A TLS write is recorded by a uretprobe
once the writer is back in user space, and by then the kernel may have
switched to the server it woke: on a loaded or small node the server's
whole exchange can reach the ring before its client's request.  So a server
exchange whose client may be traced here (a loopback peer, or a connection
whose client this linker has seen) is held until that client's request
arrives, for at most `hold_s`, then released in either case.

A loopback peer that is not traced (a load generator, a probe, a process
outside the selection) never sends a record, and holding each of its
exchanges cost the capture loop more than building the span.  So once a
hold on a connection ends without its client, that connection's later
exchanges leave at once for UNTRACED_FOR_S (counted), and then one waits
again: a connection whose client turns out to be traced after all (its
record came later than the wait, or its port was reused) is held again as
soon as its client's record is seen, or after that time.
"""
from __future__ import annotations

import time
from collections import deque

from agent.counters import Counter, Metric

LINK_WAITS = Metric("trace_link_waits", "Server spans held for their client's request on this "
                    "node (its record came later), by outcome.", "outcome")
COUNTERS = (
    Counter("link_wait_linked", LINK_WAITS, "linked"),
    Counter("link_wait_expired", LINK_WAITS, "expired"),
    Counter("link_wait_overflow", LINK_WAITS, "not_held_table_full"),
    Counter("link_wait_skipped", LINK_WAITS, "not_held_client_untraced"),
)
UNTRACED_FOR_S = 5.0


def is_loopback(address: str) -> bool:
    return address.startswith("127.") or address == "::1" or address.startswith("::ffff:127.")


class HeldExchange:
    __slots__ = ("deadline", "exchange", "ctx", "mirror_key")

    def __init__(self, deadline: float, exchange: tuple, ctx, mirror_key: tuple):
        self.deadline = deadline
        self.exchange = exchange     # None once released
        self.ctx = ctx
        self.mirror_key = mirror_key


class ClientWait:
    """Held exchanges leave in two ways: claimed by their client (client_seen
    hands the held exchange to the caller, which fills in its context) or
    on their deadline.  Deadlines are now + hold_s, so the held queue is in
    deadline order and a release looks only at what leaves; a claimed
    exchange, once released, stays in the queue until it reaches the head,
    or until the queue is full and is compacted."""

    def __init__(self, hold_s: float, counts: dict, max_held: int = 4096,
                 max_clients: int = 65536):
        self.hold_s = hold_s
        self.counts = counts
        self._max_held = max_held
        self._max_clients = max_clients
        self._held: deque[HeldExchange] = deque()   # oldest first; released claimed ones too
        self._waiting_count = 0                      # held and not claimed
        self._claimed: list[HeldExchange] = []       # claimed since the last release
        self._waiting: dict[tuple, deque] = {}       # mirror key -> held, oldest first
        self._clients: dict[tuple, None] = {}        # client connection keys seen lately
        self._untraced: dict[tuple, float] = {}      # mirror key -> when its hold expired

    def __len__(self) -> int:
        """Exchanges not released yet."""
        return self._waiting_count + len(self._claimed)

    def client_seen(self, key: tuple, times: tuple | None = None) -> HeldExchange | None:
        """A client request on the connection `key`: the held server
        exchange it completes, if one waits for it.  The caller gives it
        the client's context before the next release.  times: the client
        exchange's (start, end), when known: a held exchange not within
        them is an earlier request's, whose client was not seen."""
        self.saw_client(key)
        waiting = self._waiting.get(key)
        if not waiting:
            return None
        if times is not None:
            exchange = waiting[0].exchange
            if not times[0] <= exchange[8] <= exchange[9] <= times[1]:
                return None
        held = waiting.popleft()
        if not waiting:
            del self._waiting[key]
        self._waiting_count -= 1
        self._claimed.append(held)
        return held

    def saw_client(self, key: tuple) -> None:
        """A client request on the connection `key`: its server exchanges
        may wait for their client from now on (may_come)."""
        clients = self._clients
        if key not in clients:
            clients[key] = None
            if len(clients) > self._max_clients:
                del clients[next(iter(clients))]
            if self._untraced:
                self._untraced.pop(key, None)

    def may_come(self, mirror_key: tuple) -> bool:
        """Whether the client of a server exchange may yet be seen here."""
        if mirror_key in self._clients:
            return True
        if not is_loopback(mirror_key[0]):
            return False
        expired_at = self._untraced.get(mirror_key)
        if expired_at is None:
            return True
        if time.monotonic() - expired_at < UNTRACED_FOR_S:
            self.counts["link_wait_skipped"] += 1
            return False
        del self._untraced[mirror_key]
        return True

    def hold(self, exchange: tuple, ctx, mirror_key: tuple, now: float) -> bool:
        """Keep the exchange until its client arrives; False when full."""
        if len(self._held) >= self._max_held:
            if self._waiting_count + len(self._claimed) < len(self._held):
                self._held = deque(h for h in self._held if h.exchange is not None)
            if len(self._held) >= self._max_held:
                self.counts["link_wait_overflow"] += 1
                return False
        held = HeldExchange(now + self.hold_s, exchange, ctx, mirror_key)
        self._held.append(held)
        self._waiting_count += 1
        self._waiting.setdefault(mirror_key, deque()).append(held)
        return True

    def release(self, now: float, out: list) -> None:
        """Append the exchanges whose client came, or whose time is up."""
        counts = self.counts
        claimed = self._claimed
        if claimed:
            counts["link_wait_linked"] += len(claimed)
            for held in claimed:
                out.append(_relinked(held.exchange, held.ctx))
                held.exchange = held.ctx = None
            claimed.clear()
        held_queue = self._held
        if not self._waiting_count:
            held_queue.clear()
            return
        expired = 0
        while held_queue:
            held = held_queue[0]
            if held.exchange is None:
                held_queue.popleft()
            elif held.deadline <= now:
                held_queue.popleft()
                expired += 1
                out.append(held.exchange)
                self._forget(held)
                self._mark_untraced(held.mirror_key, now)
            else:
                break
        if expired:
            counts["link_wait_expired"] += expired
            self._waiting_count -= expired

    def _mark_untraced(self, mirror_key: tuple, now: float) -> None:
        if mirror_key in self._clients:
            return      # its client is traced: a lost record, not an untraced peer
        untraced = self._untraced
        untraced[mirror_key] = now if now != float("inf") else time.monotonic()
        if len(untraced) > self._max_clients:
            del untraced[next(iter(untraced))]

    def _forget(self, held: HeldExchange) -> None:
        waiting = self._waiting.get(held.mirror_key)
        if waiting is not None:
            waiting.remove(held)
            if not waiting:
                del self._waiting[held.mirror_key]


def _relinked(exchange: tuple, ctx) -> tuple:
    """The exchange with the trace id, parent and flags its context took
    from the client (EXCHANGE_HEAD: tag, kind, pid, trace_id, span_id,
    parent_id, flags, ...)."""
    return tuple.__new__(type(exchange), exchange[:3] + (ctx.trace_id, exchange[4],
                                                         ctx.parent_span_id, ctx.flags)
                         + exchange[7:])
