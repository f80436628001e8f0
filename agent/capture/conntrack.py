"""Where a NATed connection really goes: the node's connection tracker.

Behind a Kubernetes Service (kube-proxy's iptables, nftables or IPVS DNAT)
a client socket names the Service address as its peer while the server's
socket, the pod at the other end, names the client.  The node's connection
tracker holds both views of one connection: the original tuple (what the
client sent) and the reply tuple (what the server answers to).  The reply
tuple's source is the pod that was reached; its destination is the client
as the server sees it (after any SNAT).

Look-ups are netlink conntrack GET requests (IPCTNL_MSG_CT_GET with
CTA_TUPLE_ORIG) on a NETLINK_NETFILTER socket, in the agent's own network
namespace: the DaemonSet runs it in the host's (hostNetwork), where
kube-proxy's entries live, with CAP_NET_ADMIN (nfnetlink refuses every
request without it).  The messages are agent/capture/ctnetlink.py's, whose
numbers are read from pyroute2 when the resolver opens.

A batch of look-ups goes out in one send and its answers are read back in
order; each answer is cached by connection id (bounded, oldest out,
expired with the tracker's idle timeout), so no connection is looked up
twice.  Everything is counted: hits (a NAT entry changed the tuple),
misses (no entry, or an entry without NAT), errors (the kernel or the
socket failed).
"""
from __future__ import annotations

import errno
import logging
import os
import socket
import time

from agent.aging import expire_oldest
from agent.capture.ctnetlink import NETLINK_NETFILTER, CodecUnavailable, load_codec
from agent.counters import Counter, Metric

log = logging.getLogger(__name__)

# Requests per send: every answer waits in the socket's receive buffer
# until the batch is read back, and the kernel drops what does not fit.
MAX_BATCH = 64
RECEIVE_BUFFER_BYTES = 1 << 20
# Netlink handles the requests while send() runs, so their answers are
# queued when it returns: the timeout only bounds a wait for lost ones.
REPLY_TIMEOUT_S = 0.2
# An answer stays cached as long as the tracker keeps an idle connection
# (agent/protocols/router.py): a connection it dropped and sees again is
# not asked for twice, and the cache empties when connections stop.
CACHE_TTL_S = 300.0

LOOKUPS = Metric("conntrack_lookups", "Client connections looked up in the node's connection "
                 "tracker, by result: translated (a NAT entry named the peer really reached, a "
                 "Kubernetes Service's pod for example), untranslated (no entry, or one without "
                 "NAT), error (netlink error or timeout: the connection keeps the addresses its "
                 "socket names).", "result")
COUNTERS = (
    Counter("hits", LOOKUPS, "translated"),
    Counter("misses", LOOKUPS, "untranslated"),
    Counter("errors", LOOKUPS, "error"),
)


class ConntrackResolver:
    """Resolves client connections through the node's connection tracker.

    lookup() answers, per (connection id, local address, local port,
    remote address, remote port) of a TCP client socket, None when the
    tracker knows no translation, else (peer address, peer port, local
    address as seen by the peer, local port as seen by the peer): the server
    that was reached, and this client as that server's socket names it.
    The connection id keys the cache: an id names one connection, while a
    4-tuple can come back with a new connection (and another pod).
    """

    def __init__(self, max_entries: int = 65536, codec=None):
        self.max_entries = max_entries
        self._codec = codec
        self.counts = {c.key: 0 for c in COUNTERS}
        # connection id -> (answer, monotonic time it was cached)
        self._cache: dict = {}
        self._sock: socket.socket | None = None
        self._seq = 0
        self.unavailable_reason: str | None = "not opened"

    @property
    def available(self) -> bool:
        return self._sock is not None

    def counter_values(self):
        counts = self.counts
        return [(c, counts[c.key]) for c in COUNTERS]

    def __len__(self) -> int:
        """Connections whose answer is cached."""
        return len(self._cache)

    def open(self) -> bool:
        """Open the netlink socket and ask for an entry that cannot exist:
        "not found" proves the tracker answers; anything else says why it
        cannot be used.  Returns whether it can."""
        if self._codec is None:
            try:
                self._codec = load_codec()
            except CodecUnavailable as exc:
                self.unavailable_reason = str(exc)
                return False
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        except OSError as exc:
            self.unavailable_reason = f"no netfilter netlink socket: {exc.strerror}"
            return False
        try:
            sock.bind((0, 0))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
            sock.settimeout(REPLY_TIMEOUT_S)
            self._sock = sock
            found = self._exchange([("0.0.0.0", 0, "0.0.0.0", 0)])[0]
        except OSError as exc:
            found = -(exc.errno or errno.EIO)
        if isinstance(found, int) and found != -errno.ENOENT:
            self.close()
            code = -found
            why = {errno.EPERM: "permission denied (the agent needs CAP_NET_ADMIN in the "
                                "host's network namespace)",
                   errno.EOPNOTSUPP: "connection tracking netlink is not in this kernel",
                   errno.EPROTONOSUPPORT: "connection tracking netlink is not in this kernel",
                   }.get(code, errno.errorcode.get(code, str(code)))
            self.unavailable_reason = f"conntrack look-up refused: {why}"
            return False
        self.unavailable_reason = None
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def lookup(self, connections: list[tuple]) -> list[tuple | None]:
        """Answers for a list of (connection id, local address, local port,
        remote address, remote port), in order; cached ones without a
        request."""
        cache = self._cache
        answers: list = [None] * len(connections)
        wanted = []
        for i, connection in enumerate(connections):
            cached = cache.get(connection[0])
            if cached is not None:
                answers[i] = cached[0]
            else:
                wanted.append(i)
        if not wanted or self._sock is None:
            return answers
        counts = self.counts
        now = time.monotonic()
        for chunk_start in range(0, len(wanted), MAX_BATCH):
            chunk = wanted[chunk_start:chunk_start + MAX_BATCH]
            keys = [connections[i][1:] for i in chunk]
            try:
                results = self._exchange(keys)
            except OSError:
                counts["errors"] += len(keys)
                continue
            for i, key, result in zip(chunk, keys, results):
                if isinstance(result, int):
                    if result == -errno.ENOENT:
                        counts["misses"] += 1
                        result = None
                    else:
                        counts["errors"] += 1
                        continue
                else:
                    result = self._translation(key, result)
                    counts["hits" if result is not None else "misses"] += 1
                answers[i] = result
                cache[connections[i][0]] = (result, now)
                if len(cache) > self.max_entries:
                    del cache[next(iter(cache))]
        return answers

    def expire(self, now: float) -> None:
        """Forget answers cached longer than CACHE_TTL_S before `now`
        (time.monotonic()); the oldest come first in the dict."""
        expire_oldest(self._cache, now - CACHE_TTL_S, 1)

    @staticmethod
    def _translation(key: tuple, reply: tuple | None) -> tuple | None:
        """The reply tuple runs peer -> client: without NAT it mirrors the
        original exactly."""
        if reply is None:
            return None
        peer_addr, peer_port, seen_addr, seen_port = reply
        local_addr, local_port, remote_addr, remote_port = key
        if (peer_addr, peer_port, seen_addr, seen_port) == \
                (remote_addr, remote_port, local_addr, local_port):
            return None
        return reply

    def _exchange(self, keys: list[tuple]) -> list:
        """Send one GET per key, read one answer per GET: the reply tuple
        (or None when the entry has none), or a negative errno."""
        sock, codec = self._sock, self._codec
        first = self._seq + 1
        self._seq += len(keys)
        sock.send(b"".join(codec.get_request(first + n, *key) for n, key in enumerate(keys)))
        results: list = [-errno.ETIMEDOUT] * len(keys)
        pending = len(keys)
        while pending > 0:
            try:
                data = sock.recv(RECEIVE_BUFFER_BYTES)
            except socket.timeout:
                break
            pending -= codec.read_answers(data, first, results)
        return results


def open_resolver() -> ConntrackResolver:
    """The agent's resolver, said once at start when it cannot work: spans
    then keep the addresses sockets name (Service addresses unresolved)."""
    resolver = ConntrackResolver()
    if not resolver.open():
        log.warning("NAT resolution off: %s; client spans behind Service addresses are not "
                    "linked to their server spans on this node (--no-conntrack silences this)",
                    resolver.unavailable_reason)
    return resolver


def doctor_text() -> str:
    """Whether NAT resolution works here (`otel-ebpf doctor`): the tracker
    answers look-ups, and from the host's network namespace, where
    kube-proxy's entries are.  Without it the agent still runs."""
    resolver = ConntrackResolver()
    if not resolver.open():
        return (f"NAT resolution (conntrack): unavailable, {resolver.unavailable_reason}; "
                "client spans behind Service addresses stay unlinked")
    resolver.close()
    text = "NAT resolution (conntrack): available"
    try:
        own, host = (os.stat(f"/proc/{pid}/ns/net").st_ino for pid in ("self", "1"))
    except OSError:
        return text
    if own != host:
        text += (" but not in the host's network namespace (PID 1's): Service translations "
                 "made on the node are invisible here (run with hostNetwork)")
    return text
