"""Conntrack look-ups per second: agent.capture.conntrack's batched netlink
GETs versus pyroute2's Conntrack.entry("get"), for the same connections.

Run as root after `make setup`:
    .venv/bin/python benchmarks/conntrack_lookups.py [--connections 2000]
It adds a "Service" address (10.96.250.1:80, routed to lo) with an
nftables DNAT rule in nat OUTPUT to a listener on 127.0.0.1, opens the
given number of connections through it and as many straight to the
listener (tracked, not translated: what most look-ups on a node find),
then times each way of looking every one of them up (a fresh cache for
the agent's resolver, so each look-up is a real netlink request).
Removes the rule and route after.
"""
from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.capture.conntrack import ConntrackResolver  # noqa: E402

SERVICE = ("10.96.250.1", 80)
TABLE = "otel_ebpf_bench_nat"


def add_service(port: int) -> None:
    rules = (f"table ip {TABLE} {{\n chain out {{\n type nat hook output priority -100;\n"
             f" ip daddr {SERVICE[0]} tcp dport {SERVICE[1]} dnat to 127.0.0.1:{port};\n }}\n}}\n")
    subprocess.run(["nft", "-f", "-"], input=rules.encode(), check=True)
    subprocess.run(["ip", "route", "replace", f"{SERVICE[0]}/32", "dev", "lo"], check=True)


def remove_service() -> None:
    subprocess.run(["nft", "delete", "table", "ip", TABLE], capture_output=True)
    subprocess.run(["ip", "route", "del", f"{SERVICE[0]}/32", "dev", "lo"], capture_output=True)


def agent_rate(keys: list[tuple], batch: int) -> tuple[float, dict]:
    resolver = ConntrackResolver()
    if not resolver.open():
        raise SystemExit(resolver.unavailable_reason)
    started = time.perf_counter()
    for start in range(0, len(keys), batch):
        resolver.lookup(keys[start:start + batch])
    elapsed = time.perf_counter() - started
    counts = {key: resolver.counts[key] for key in ("hits", "misses", "errors")}
    resolver.close()
    return len(keys) / elapsed, counts


def pyroute2_rate(keys: list[tuple]) -> float:
    from pyroute2 import Conntrack
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple
    with Conntrack() as ct:
        started = time.perf_counter()
        for _, local_addr, local_port, remote_addr, remote_port in keys:
            ct.entry("get", tuple_orig=NFCTAttrTuple(
                saddr=local_addr, daddr=remote_addr, proto=socket.IPPROTO_TCP,
                sport=local_port, dport=remote_port))
        return len(keys) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=2000)
    args = parser.parse_args()
    listener = socket.create_server(("127.0.0.1", 0), backlog=args.connections)
    add_service(listener.getsockname()[1])
    direct = listener.getsockname()
    clients, keys = [], {"through the Service": [], "direct": []}
    try:
        for _ in range(args.connections):
            for kind, address in (("through the Service", SERVICE), ("direct", direct)):
                client = socket.create_connection(address, timeout=5)
                listener.accept()[0].close()
                clients.append(client)
                keys[kind].append((len(clients),) + client.getsockname() + address)
        for kind, kind_keys in keys.items():
            print(f"{len(kind_keys)} connections {kind}:")
            for batch in (1, 64, 1024):
                rate, counts = agent_rate(kind_keys, batch)
                print(f"  agent resolver, batches of {batch:4}: {rate:9.0f} look-ups/s  {counts}")
            print(f"  pyroute2 Conntrack.entry('get'):  {pyroute2_rate(kind_keys):9.0f} look-ups/s")
    finally:
        for c in clients:
            c.close()
        remove_service()


if __name__ == "__main__":
    main()
