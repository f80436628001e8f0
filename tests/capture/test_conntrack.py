"""The conntrack codec against pyroute2's own ctnetlink messages, and what
the resolver makes of the kernel's answers.  Look-ups against the node's
real connection tracker are in tests/kernel/test_nat.py."""
from __future__ import annotations

import socket
import subprocess
import sys

import pytest
from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple, nfct_msg

from agent.capture.conntrack import ConntrackResolver
from agent.capture.ctnetlink import Codec, load_codec, numbers_from_pyroute2
from agent.runtime.metrics import declared_families

CODEC = Codec(numbers_from_pyroute2())
get_request, read_answers, reply_tuple = CODEC.get_request, CODEC.read_answers, CODEC.reply_tuple


def _decoded(data: bytes):
    message = nfct_msg(data)
    message.decode()
    return message


@pytest.mark.parametrize("family, local, remote", [
    (socket.AF_INET, "10.0.1.2", "10.96.0.10"),
    (socket.AF_INET6, "fd00::2", "fd00:96::a"),
])
def test_get_request_is_the_conntrack_get_pyroute2_reads(family, local, remote):
    message = _decoded(get_request(41, local, 50123, remote, 80))
    assert message["header"]["type"] == (1 << 8) | 1      # ctnetlink, IPCTNL_MSG_CT_GET
    assert message["header"]["sequence_number"] == 41
    assert message["header"]["length"] == len(get_request(41, local, 50123, remote, 80))
    assert message["nfgen_family"] == family
    orig = NFCTAttrTuple.from_netlink(family, message.get_attr("CTA_TUPLE_ORIG"))
    assert (orig.saddr, orig.sport, orig.daddr, orig.dport, orig.proto) == \
        (local, 50123, remote, 80, socket.IPPROTO_TCP)


def _entry(family, orig: tuple, reply: tuple) -> bytes:
    """A conntrack entry as the kernel answers a GET, encoded by pyroute2."""
    def as_tuple(t):
        return NFCTAttrTuple(family=family, saddr=t[0], sport=t[1], daddr=t[2], dport=t[3],
                             proto=socket.IPPROTO_TCP)
    message = nfct_msg.create_from(tuple_orig=as_tuple(orig), tuple_reply=as_tuple(reply))
    message["nfgen_family"] = family
    message["header"]["type"] = 1 << 8                    # ctnetlink, IPCTNL_MSG_CT_NEW
    message.encode()
    return bytes(message.data)


def test_reply_tuple_reads_the_pod_and_the_client_as_the_pod_sees_it():
    entry = _entry(socket.AF_INET, ("10.0.1.2", 50123, "10.96.0.10", 80),
                   ("10.0.2.7", 8080, "10.0.1.2", 50123))
    assert reply_tuple(entry) == ("10.0.2.7", 8080, "10.0.1.2", 50123)
    entry6 = _entry(socket.AF_INET6, ("fd00::2", 50123, "fd00:96::a", 80),
                    ("fd00:2::7", 8080, "fd00::2", 50123))
    assert reply_tuple(entry6) == ("fd00:2::7", 8080, "fd00::2", 50123)


def test_reply_tuple_of_a_message_without_one_or_cut_short_is_none():
    entry = _entry(socket.AF_INET, ("10.0.1.2", 1, "10.0.0.1", 2), ("10.0.0.1", 2, "10.0.1.2", 1))
    assert reply_tuple(entry[:24]) is None
    # Cut inside the reply tuple (the last attribute): it runs past the end.
    assert reply_tuple(entry[:len(entry) - 6]) is None


def test_translation_is_none_when_the_reply_mirrors_the_original():
    key = ("10.0.1.2", 50123, "10.0.2.7", 8080)
    assert ConntrackResolver._translation(key, ("10.0.2.7", 8080, "10.0.1.2", 50123)) is None
    # DNAT (a Service), and SNAT (the server sees the node, not the pod).
    assert ConntrackResolver._translation(("10.0.1.2", 50123, "10.96.0.10", 80),
                                          ("10.0.2.7", 8080, "10.0.1.2", 50123)) == \
        ("10.0.2.7", 8080, "10.0.1.2", 50123)
    assert ConntrackResolver._translation(key, ("10.0.2.7", 8080, "192.0.2.1", 61000)) == \
        ("10.0.2.7", 8080, "192.0.2.1", 61000)


def test_answers_are_matched_to_their_requests_by_sequence_number():
    entry = _entry(socket.AF_INET, ("10.0.1.2", 50123, "10.96.0.10", 80),
                   ("10.0.2.7", 8080, "10.0.1.2", 50123))
    second = bytearray(entry)
    second[8:12] = (8).to_bytes(4, "little")          # nlmsghdr.nlmsg_seq
    padding = b"\0" * (-len(entry) & 3)
    results = [-1, -1, -1]
    # Answers out of order, and one for a request of another batch (seq 99).
    stranger = bytearray(entry)
    stranger[8:12] = (99).to_bytes(4, "little")
    assert read_answers(bytes(second) + padding + bytes(stranger) + padding, 7, results) == 1
    assert results == [-1, ("10.0.2.7", 8080, "10.0.1.2", 50123), -1]


def test_a_resolver_that_is_not_open_answers_nothing_and_says_why():
    resolver = ConntrackResolver()
    assert resolver.lookup([(1, "10.0.1.2", 1, "10.96.0.10", 80)]) == [None]
    assert not resolver.available
    assert resolver.unavailable_reason
    assert resolver.counts == {"hits": 0, "misses": 0, "errors": 0}
    assert len(resolver) == 0


def test_lookups_are_exported_as_one_labelled_counter():
    resolver = ConntrackResolver()
    resolver.counts.update(hits=3, misses=5, errors=1)
    (family,) = declared_families(resolver.counter_values())
    assert family.name == "otel_ebpf_conntrack_lookups"
    assert {s.labels["result"]: s.value for s in family.samples} == \
        {"translated": 3, "untranslated": 5, "error": 1}


def test_the_child_interpreter_reads_the_numbers_pyroute2_defines():
    assert load_codec().numbers == numbers_from_pyroute2()


def test_the_running_agent_never_imports_pyroute2():
    """Its package import would stay resident: the agent's modules, its
    resolver opened and asked, leave pyroute2 out of the process."""
    probe = ("import sys\n"
             "import agent.runtime.cli, agent.runtime.agent, agent.runtime.pipeline\n"
             "from agent.capture.conntrack import ConntrackResolver\n"
             "resolver = ConntrackResolver()\n"
             "resolver.open()\n"
             "resolver.lookup([(1, '10.0.1.2', 50123, '10.96.0.10', 80)])\n"
             "print(resolver._codec is not None, sorted(m for m in sys.modules if 'pyroute2' in m))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["True", "[]"]
