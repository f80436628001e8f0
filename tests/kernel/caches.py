"""Private Redis and memcached servers for the kernel tests: Debian's
redis-server and memcached on 127.0.0.1, on a free port that is not their
usual one (the agent recognises both from the wire, not the port), in a
temporary directory, stopped at the end."""
from __future__ import annotations

import shutil
import subprocess
import tempfile
import time

import pytest

from loopback import free_port, wait_for_port

PASSWORD = "kernel-test-secret-pw"
SECRET_VALUE = "kernel-test-secret-value-8d1f"


class ServerProcess:
    """A server this module started, stopped at the end."""

    proc: subprocess.Popen

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class RedisServer(ServerProcess):
    system = "redis"

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="otel-ebpf-redis-")
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
             "--save", "", "--appendonly", "no", "--requirepass", PASSWORD,
             "--daemonize", "no", "--logfile", f"{self.dir}/redis.log"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, process=self.proc, name="redis-server")

    def cli(self, *args: str, timeout: float = 10) -> str:
        """One redis-cli run (its own connection: AUTH, then the command);
        an error reply is printed, not raised."""
        return subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), "-a", PASSWORD,
             "--no-auth-warning", *args], capture_output=True, text=True,
            timeout=timeout).stdout

    def client(self, **kwargs):
        import redis
        return redis.Redis(host="127.0.0.1", port=self.port, password=PASSWORD, **kwargs)

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class MemcachedServer(ServerProcess):
    system = "memcached"

    def __init__(self):
        self.port = free_port()
        # -U 0: no UDP port; memcached running as root must name a user.
        self.proc = subprocess.Popen(
            ["memcached", "-l", "127.0.0.1", "-p", str(self.port), "-U", "0", "-u", "nobody",
             "-m", "16"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, process=self.proc, name="memcached")

    def client(self, **kwargs):
        from pymemcache.client.base import Client
        return Client(("127.0.0.1", self.port), default_noreply=False, **kwargs)


def _server(cls, tools: tuple, module: str):
    for tool in tools:
        if not shutil.which(tool):
            pytest.skip(f"{tool} is not installed (scripts/install-system-deps.sh)")
    pytest.importorskip(module, reason=f"{module} is not installed in the venv")
    started = time.monotonic()
    server = cls()
    print(f"\n{cls.system}: started on 127.0.0.1:{server.port} in "
          f"{time.monotonic() - started:.1f}s")
    return server


@pytest.fixture(name="redis_server")
def redis_fixture():
    server = _server(RedisServer, ("redis-server", "redis-cli", "redis-benchmark"), "redis")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(name="memcached_server")
def memcached_fixture():
    server = _server(MemcachedServer, ("memcached",), "pymemcache")
    try:
        yield server
    finally:
        server.stop()
