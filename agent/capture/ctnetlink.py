"""ctnetlink messages, packed and read with struct: a conntrack GET for a
TCP connection's original tuple, and the reply tuple of the entry the
kernel answers with.  The protocol numbers come from pyroute2, which
defines ctnetlink; its message classes cost over ten times as much per
look-up (docs/nat.md), so messages are built here.
tests/capture/test_conntrack.py checks this codec against pyroute2's.
"""
from __future__ import annotations

import errno
import ipaddress
import socket
import struct

from pyroute2.netlink import NLM_F_REQUEST, NLMSG_ERROR
from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_CTNETLINK
from pyroute2.netlink.nfnetlink.nfctsocket import IPCTNL_MSG_CT_GET, IPCTNL_MSG_CT_NEW, nfct_msg

NETLINK_NETFILTER = 12
NLA_F_NESTED = 0x8000
_NLA_TYPE_MASK = 0x3FFF


def _attribute_number(nla_class, name: str) -> int:
    """A ctnetlink attribute's number: its place in pyroute2's table."""
    for number, entry in enumerate(nla_class.nla_map):
        if entry[-2] == name:
            return entry[0] if len(entry) == 3 else number
    raise LookupError(name)


_tuple = nfct_msg.cta_tuple
CTA_TUPLE_ORIG = _attribute_number(nfct_msg, "CTA_TUPLE_ORIG")
CTA_TUPLE_REPLY = _attribute_number(nfct_msg, "CTA_TUPLE_REPLY")
CTA_TUPLE_IP = _attribute_number(_tuple, "CTA_TUPLE_IP")
CTA_TUPLE_PROTO = _attribute_number(_tuple, "CTA_TUPLE_PROTO")
CTA_IP_V4_SRC = _attribute_number(_tuple.cta_ip, "CTA_IP_V4_SRC")
CTA_IP_V4_DST = _attribute_number(_tuple.cta_ip, "CTA_IP_V4_DST")
CTA_IP_V6_SRC = _attribute_number(_tuple.cta_ip, "CTA_IP_V6_SRC")
CTA_IP_V6_DST = _attribute_number(_tuple.cta_ip, "CTA_IP_V6_DST")
CTA_PROTO_NUM = _attribute_number(_tuple.cta_proto, "CTA_PROTO_NUM")
CTA_PROTO_SRC_PORT = _attribute_number(_tuple.cta_proto, "CTA_PROTO_SRC_PORT")
CTA_PROTO_DST_PORT = _attribute_number(_tuple.cta_proto, "CTA_PROTO_DST_PORT")

_MSG_GET = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET
_MSG_ENTRY = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW
_NLMSG = struct.Struct("=IHHII")     # struct nlmsghdr
_NFGEN = struct.Struct("=BBH")       # struct nfgenmsg (res_id 0 either way)
_NLA = struct.Struct("=HH")          # struct nlattr
_NLMSG_SIZE = _NLMSG.size
_BODY_START = _NLMSG_SIZE + _NFGEN.size


def _nla(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return _NLA.pack(size, kind) + payload + b"\0" * (-size & 3)


def get_request(seq: int, local_addr: str, local_port: int, remote_addr: str,
                remote_port: int) -> bytes:
    """A conntrack GET for the TCP connection local -> remote, as its first
    packet left: the original tuple.  Addresses are text, IPv4 or IPv6."""
    if ":" in local_addr:
        family, src_attr, dst_attr = socket.AF_INET6, CTA_IP_V6_SRC, CTA_IP_V6_DST
    else:
        family, src_attr, dst_attr = socket.AF_INET, CTA_IP_V4_SRC, CTA_IP_V4_DST
    addresses = (_nla(src_attr, socket.inet_pton(family, local_addr))
                 + _nla(dst_attr, socket.inet_pton(family, remote_addr)))
    proto = (_nla(CTA_PROTO_NUM, bytes((socket.IPPROTO_TCP,)))
             + _nla(CTA_PROTO_SRC_PORT, struct.pack("!H", local_port))
             + _nla(CTA_PROTO_DST_PORT, struct.pack("!H", remote_port)))
    tuple_orig = _nla(CTA_TUPLE_ORIG | NLA_F_NESTED,
                      _nla(CTA_TUPLE_IP | NLA_F_NESTED, addresses)
                      + _nla(CTA_TUPLE_PROTO | NLA_F_NESTED, proto))
    body = _NFGEN.pack(family, 0, 0) + tuple_orig
    return _NLMSG.pack(_NLMSG_SIZE + len(body), _MSG_GET, NLM_F_REQUEST, seq, 0) + body


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


def reply_tuple(message: bytes) -> tuple | None:
    """(source address, source port, destination address, destination port)
    of a conntrack entry's reply tuple, or None when the message has none."""
    for kind, start, end in _attributes(message, _BODY_START, len(message)):
        if kind != CTA_TUPLE_REPLY:
            continue
        src = dst = sport = dport = None
        for part, p_start, p_end in _attributes(message, start, end):
            if part == CTA_TUPLE_IP:
                for ip_kind, a_start, a_end in _attributes(message, p_start, p_end):
                    if ip_kind in (CTA_IP_V4_SRC, CTA_IP_V6_SRC):
                        src = _address(message[a_start:a_end])
                    elif ip_kind in (CTA_IP_V4_DST, CTA_IP_V6_DST):
                        dst = _address(message[a_start:a_end])
            elif part == CTA_TUPLE_PROTO:
                for proto_kind, a_start, _ in _attributes(message, p_start, p_end):
                    if proto_kind == CTA_PROTO_SRC_PORT:
                        sport = struct.unpack_from("!H", message, a_start)[0]
                    elif proto_kind == CTA_PROTO_DST_PORT:
                        dport = struct.unpack_from("!H", message, a_start)[0]
        if None in (src, dst, sport, dport):
            return None
        return src, sport, dst, dport
    return None


def read_answers(data: bytes, first_seq: int, results: list) -> int:
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
            if kind == NLMSG_ERROR:
                code = struct.unpack_from("=i", message, _NLMSG_SIZE)[0]
                results[index] = code if code < 0 else -errno.EIO
            elif kind == _MSG_ENTRY:
                try:
                    results[index] = reply_tuple(message)
                except (ValueError, struct.error):   # a malformed address or port
                    results[index] = -errno.EBADMSG
            read += 1
        offset += (length + 3) & ~3
    return read
