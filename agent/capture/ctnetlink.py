"""ctnetlink messages, packed and read with struct: a conntrack GET for a
TCP connection's original tuple, and the reply tuple of the entry the
kernel answers with.  pyroute2's message classes cost over ten times as
much per look-up (docs/nat.md), so messages are built here;
tests/capture/test_conntrack.py checks this codec against pyroute2's.

The protocol's numbers come from pyroute2's tables, read by a short-lived
interpreter (load_codec): importing any part of pyroute2 runs its package
__init__, which imports the whole library (asyncio, multiprocessing, IPDB,
NDB...).  Imported in the agent, that would stay resident for the agent's
life (docs/performance.md: about 11 MB of the agent's proportional set
size, when span workers were forked copies of it), for a dozen integers.
"""
from __future__ import annotations

import errno
import ipaddress
import json
import socket
import struct
import subprocess
import sys

NETLINK_NETFILTER = 12
NLA_F_NESTED = 0x8000
_NLA_TYPE_MASK = 0x3FFF
# How long the interpreter that reads pyroute2's tables may take.
NUMBERS_TIMEOUT_S = 30.0

_NLMSG = struct.Struct("=IHHII")     # struct nlmsghdr
_NFGEN = struct.Struct("=BBH")       # struct nfgenmsg (res_id 0 either way)
_NLA = struct.Struct("=HH")          # struct nlattr
_NLMSG_SIZE = _NLMSG.size
_BODY_START = _NLMSG_SIZE + _NFGEN.size
_PORT = struct.Struct("!H")
NUMBER_NAMES = ("NLM_F_REQUEST", "NLMSG_ERROR", "MSG_GET", "MSG_ENTRY", "CTA_TUPLE_ORIG",
                "CTA_TUPLE_REPLY", "CTA_TUPLE_IP", "CTA_TUPLE_PROTO", "CTA_IP_V4_SRC",
                "CTA_IP_V4_DST", "CTA_IP_V6_SRC", "CTA_IP_V6_DST", "CTA_PROTO_NUM",
                "CTA_PROTO_SRC_PORT", "CTA_PROTO_DST_PORT")


def numbers_from_pyroute2() -> dict[str, int]:
    """ctnetlink's message and attribute numbers, as pyroute2 defines them."""
    from pyroute2.netlink import NLM_F_REQUEST, NLMSG_ERROR
    from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_CTNETLINK
    from pyroute2.netlink.nfnetlink.nfctsocket import (IPCTNL_MSG_CT_GET, IPCTNL_MSG_CT_NEW,
                                                       nfct_msg)

    def attribute(nla_class, name: str) -> int:
        for number, entry in enumerate(nla_class.nla_map):
            if entry[-2] == name:
                return entry[0] if len(entry) == 3 else number
        raise LookupError(name)

    tuple_ = nfct_msg.cta_tuple
    numbers = {"NLM_F_REQUEST": NLM_F_REQUEST, "NLMSG_ERROR": NLMSG_ERROR,
               "MSG_GET": (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET,
               "MSG_ENTRY": (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW}
    for owner, names in ((nfct_msg, ("CTA_TUPLE_ORIG", "CTA_TUPLE_REPLY")),
                         (tuple_, ("CTA_TUPLE_IP", "CTA_TUPLE_PROTO")),
                         (tuple_.cta_ip, ("CTA_IP_V4_SRC", "CTA_IP_V4_DST",
                                          "CTA_IP_V6_SRC", "CTA_IP_V6_DST")),
                         (tuple_.cta_proto, ("CTA_PROTO_NUM", "CTA_PROTO_SRC_PORT",
                                             "CTA_PROTO_DST_PORT"))):
        for name in names:
            numbers[name] = attribute(owner, name)
    return numbers


class CodecUnavailable(Exception):
    """pyroute2's tables could not be read."""


def load_codec() -> Codec:
    """The codec, with the numbers a child interpreter read from pyroute2."""
    try:
        child = subprocess.run([sys.executable, "-m", __name__], stdin=subprocess.DEVNULL,
                               capture_output=True, text=True, timeout=NUMBERS_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CodecUnavailable(f"reading pyroute2's ctnetlink numbers failed: {exc}") from exc
    if child.returncode != 0:
        last = (child.stderr.strip().splitlines() or [f"exit status {child.returncode}"])[-1]
        raise CodecUnavailable(f"reading pyroute2's ctnetlink numbers failed: {last}")
    try:
        return Codec(json.loads(child.stdout))
    except (ValueError, KeyError, TypeError) as exc:
        raise CodecUnavailable(f"pyroute2's ctnetlink numbers unreadable: {exc!r}") from exc


def _nla(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return _NLA.pack(size, kind) + payload + b"\0" * (-size & 3)


def _attributes(data: bytes, start: int, end: int):
    """(type, payload start, payload end) of each attribute in data[start:end]."""
    while start + 4 <= end:
        size, kind = _NLA.unpack_from(data, start)
        if size < 4 or start + size > end:
            return
        yield kind & _NLA_TYPE_MASK, start + 4, start + size
        start += (size + 3) & ~3


def _address(raw: bytes) -> str:
    return ipaddress.ip_address(bytes(raw)).compressed


class Codec:
    """Conntrack GET requests and the answers to them, given the numbers."""

    def __init__(self, numbers: dict[str, int]):
        n = {name: int(numbers[name]) for name in NUMBER_NAMES}
        self.numbers = n
        self._request_flag, self._error = n["NLM_F_REQUEST"], n["NLMSG_ERROR"]
        self._get, self._entry = n["MSG_GET"], n["MSG_ENTRY"]
        self._orig, self._reply = n["CTA_TUPLE_ORIG"], n["CTA_TUPLE_REPLY"]
        self._ip, self._proto = n["CTA_TUPLE_IP"], n["CTA_TUPLE_PROTO"]
        self._v4 = (n["CTA_IP_V4_SRC"], n["CTA_IP_V4_DST"])
        self._v6 = (n["CTA_IP_V6_SRC"], n["CTA_IP_V6_DST"])
        self._sources = {n["CTA_IP_V4_SRC"], n["CTA_IP_V6_SRC"]}
        self._destinations = {n["CTA_IP_V4_DST"], n["CTA_IP_V6_DST"]}
        self._proto_num = n["CTA_PROTO_NUM"]
        self._src_port, self._dst_port = n["CTA_PROTO_SRC_PORT"], n["CTA_PROTO_DST_PORT"]

    def get_request(self, seq: int, local_addr: str, local_port: int, remote_addr: str,
                    remote_port: int) -> bytes:
        """A conntrack GET for the TCP connection local -> remote, as its first
        packet left: the original tuple.  Addresses are text, IPv4 or IPv6."""
        if ":" in local_addr:
            family, (src_attr, dst_attr) = socket.AF_INET6, self._v6
        else:
            family, (src_attr, dst_attr) = socket.AF_INET, self._v4
        addresses = (_nla(src_attr, socket.inet_pton(family, local_addr))
                     + _nla(dst_attr, socket.inet_pton(family, remote_addr)))
        proto = (_nla(self._proto_num, bytes((socket.IPPROTO_TCP,)))
                 + _nla(self._src_port, _PORT.pack(local_port))
                 + _nla(self._dst_port, _PORT.pack(remote_port)))
        tuple_orig = _nla(self._orig | NLA_F_NESTED,
                          _nla(self._ip | NLA_F_NESTED, addresses)
                          + _nla(self._proto | NLA_F_NESTED, proto))
        body = _NFGEN.pack(family, 0, 0) + tuple_orig
        return _NLMSG.pack(_NLMSG_SIZE + len(body), self._get, self._request_flag, seq, 0) + body

    def reply_tuple(self, message: bytes) -> tuple | None:
        """(source address, source port, destination address, destination port)
        of a conntrack entry's reply tuple, or None when the message has none."""
        for kind, start, end in _attributes(message, _BODY_START, len(message)):
            if kind != self._reply:
                continue
            src = dst = sport = dport = None
            for part, p_start, p_end in _attributes(message, start, end):
                if part == self._ip:
                    for ip_kind, a_start, a_end in _attributes(message, p_start, p_end):
                        if ip_kind in self._sources:
                            src = _address(message[a_start:a_end])
                        elif ip_kind in self._destinations:
                            dst = _address(message[a_start:a_end])
                elif part == self._proto:
                    for proto_kind, a_start, _ in _attributes(message, p_start, p_end):
                        if proto_kind == self._src_port:
                            sport = _PORT.unpack_from(message, a_start)[0]
                        elif proto_kind == self._dst_port:
                            dport = _PORT.unpack_from(message, a_start)[0]
            if None in (src, dst, sport, dport):
                return None
            return src, sport, dst, dport
        return None

    def read_answers(self, data: bytes, first_seq: int, results: list) -> int:
        """Fill results[seq - first_seq] from the netlink messages in data: the
        reply tuple (None when the entry has none) or a negative errno.
        Returns how many answers were read."""
        read = 0
        offset = 0
        while offset + _NLMSG_SIZE <= len(data):
            length, kind, _, seq, _ = _NLMSG.unpack_from(data, offset)
            if length < _NLMSG_SIZE or offset + length > len(data):
                break
            index = seq - first_seq
            if 0 <= index < len(results):
                message = data[offset:offset + length]
                if kind == self._error:
                    code = struct.unpack_from("=i", message, _NLMSG_SIZE)[0]
                    results[index] = code if code < 0 else -errno.EIO
                elif kind == self._entry:
                    try:
                        results[index] = self.reply_tuple(message)
                    except (ValueError, struct.error):   # a malformed address or port
                        results[index] = -errno.EBADMSG
                read += 1
            offset += (length + 3) & ~3
        return read


if __name__ == "__main__":
    json.dump(numbers_from_pyroute2(), sys.stdout)
