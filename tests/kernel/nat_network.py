"""Small test networks with a Kubernetes-like Service: an address that no
host owns, DNATed by an nftables rule to a "pod" that serves HTTP.

PodNetwork: two network namespaces (a client pod and a server pod), each
joined to the root namespace by a veth pair; the root namespace routes
between them and DNATs the Service address in nat PREROUTING, the way
kube-proxy does for traffic from pods.
LoopbackService: the Service address routed to lo in the root namespace,
DNATed in nat OUTPUT to a server on 127.0.0.1.

Names carry the test process's pid (tests of several checkouts may run at
once); everything made is removed on close, whatever failed on the way.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

PEERS = Path(__file__).resolve().parent / "peers"


def run(*args: str, input: str | None = None) -> None:
    result = subprocess.run(args, input=input, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {result.stderr.strip()}")


def nat_table(name: str, hook: str, service: tuple[str, int], target: tuple[str, int]) -> str:
    """An nftables table with one DNAT rule in the nat hook `hook`."""
    return (f"table ip {name} {{\n"
            f"  chain service {{\n"
            f"    type nat hook {hook} priority -100;\n"
            f"    ip daddr {service[0]} tcp dport {service[1]} dnat to {target[0]}:{target[1]};\n"
            f"  }}\n"
            f"}}\n")


def start_backend(port: int, host: str, netns: str | None = None) -> subprocess.Popen:
    """tests/kernel/peers/backend.py on host:port, in netns if given."""
    prefix = ["ip", "netns", "exec", netns] if netns else []
    proc = subprocess.Popen(prefix + [sys.executable, str(PEERS / "backend.py"), str(port)],
                            stdout=subprocess.PIPE,
                            env={**os.environ, "BACKEND_HOST": host,
                                 "OTEL_SERVICE_NAME": "nat-backend"})
    if proc.stdout.readline().strip() != b"ready":
        proc.kill()
        raise RuntimeError("backend did not start")
    return proc


def curl_status(url: str, netns: str | None = None) -> dict:
    """curl as a user runs it (in netns if given): status and local port."""
    prefix = ["ip", "netns", "exec", netns] if netns else []
    out = subprocess.run(prefix + ["curl", "-s", "-o", "/dev/null", "--max-time", "5", "-w",
                                   "%{http_code} %{local_ip} %{local_port}", url],
                         capture_output=True, text=True, check=True).stdout.split()
    return {"status": int(out[0]), "local_ip": out[1], "local_port": int(out[2])}


class _Network:
    def __init__(self):
        self._undo = contextlib.ExitStack()
        self.tag = f"{os.getpid() % 100000}"
        self.backend = None

    def _do(self, *args: str, undo: tuple | None = None, input: str | None = None) -> None:
        run(*args, input=input)
        if undo is not None:
            self._undo.callback(subprocess.run, undo, capture_output=True)

    def close(self) -> None:
        if self.backend is not None:
            self.backend.terminate()
            self.backend.wait()
        self._undo.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class PodNetwork(_Network):
    """client pod 10.213.1.2 and server pod 10.213.2.2, the Service
    10.96.213.10:80 -> server pod :8080."""

    SERVICE = ("10.96.213.10", 80)
    POD = ("10.213.2.2", 8080)
    CLIENT_IP = "10.213.1.2"

    def __init__(self):
        super().__init__()
        self.client_ns = f"otelnat-c{self.tag}"
        self.server_ns = f"otelnat-s{self.tag}"
        self.table = f"otel_ebpf_nat_{self.tag}"
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        with open("/proc/sys/net/ipv4/ip_forward") as f:
            forwarding = f.read().strip()
        for ns, subnet, peer in ((self.client_ns, 1, "c"), (self.server_ns, 2, "s")):
            outside, inside = f"on{peer}{self.tag}", f"in{peer}{self.tag}"
            self._do("ip", "netns", "add", ns, undo=("ip", "netns", "del", ns))
            self._do("ip", "link", "add", outside, "type", "veth", "peer", "name", inside,
                     undo=("ip", "link", "del", outside))
            self._do("ip", "link", "set", inside, "netns", ns)
            self._do("ip", "addr", "add", f"10.213.{subnet}.1/24", "dev", outside)
            self._do("ip", "link", "set", outside, "up")
            exec_ns = ("ip", "netns", "exec", ns)
            self._do(*exec_ns, "ip", "addr", "add", f"10.213.{subnet}.2/24", "dev", inside)
            self._do(*exec_ns, "ip", "link", "set", inside, "up")
            self._do(*exec_ns, "ip", "link", "set", "lo", "up")
            self._do(*exec_ns, "ip", "route", "add", "default", "via", f"10.213.{subnet}.1")
        self._do("sysctl", "-qw", "net.ipv4.ip_forward=1",
                 undo=("sysctl", "-qw", f"net.ipv4.ip_forward={forwarding}"))
        self._do("nft", "-f", "-", input=nat_table(self.table, "prerouting", self.SERVICE, self.POD),
                 undo=("nft", "delete", "table", "ip", self.table))
        self.backend = start_backend(self.POD[1], self.POD[0], self.server_ns)

    def request(self, path: str) -> dict:
        """A client pod's request to the Service address."""
        return curl_status(f"http://{self.SERVICE[0]}:{self.SERVICE[1]}{path}", self.client_ns)


class LoopbackService(_Network):
    """The Service 10.96.213.11:80 -> 127.0.0.1:port, all in the root
    namespace (nat OUTPUT, as for a node's own processes)."""

    SERVICE = ("10.96.213.11", 80)

    def __init__(self, port: int):
        super().__init__()
        self.pod = ("127.0.0.1", port)
        self.table = f"otel_ebpf_lo_nat_{self.tag}"
        try:
            self._do("ip", "route", "add", f"{self.SERVICE[0]}/32", "dev", "lo",
                     undo=("ip", "route", "del", f"{self.SERVICE[0]}/32", "dev", "lo"))
            self._do("nft", "-f", "-", input=nat_table(self.table, "output", self.SERVICE, self.pod),
                     undo=("nft", "delete", "table", "ip", self.table))
            self.backend = start_backend(port, "127.0.0.1")
        except BaseException:
            self.close()
            raise

    def request(self, path: str) -> dict:
        return curl_status(f"http://{self.SERVICE[0]}:{self.SERVICE[1]}{path}")
