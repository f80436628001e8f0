"""Kernel tests: real BPF programs, real servers and clients on loopback.

They need root and a kernel that loads the capture object; without them
every test here is skipped with the reason."""
from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from agent.capture.kernel_headers import KernelHeadersError, find as find_kernel_headers  # noqa: E402
from agent.capture.hook_choice import ring_buffer_support  # noqa: E402
from loopback import TIME_SCALE, free_port, wait_for_port  # noqa: E402,F401  (re-exported)
from otlp_receiver import OtlpReceiver  # noqa: E402

AGENT = [sys.executable, "-m", "agent.runtime.cli"] if not (ROOT / ".venv/bin/otel-ebpf").exists() \
    else [str(ROOT / ".venv/bin/otel-ebpf")]
PEERS = Path(__file__).resolve().parent / "peers"


def _bcc_kernel_headers() -> str | None:
    """The headers the BCC loader finds by itself (make setup installs
    Debian's; the BCC build needs no exact match with this kernel)."""
    try:
        headers = find_kernel_headers()
    except KernelHeadersError:
        return None
    headers.close()
    return str(headers.origin)


BCC_KERNEL_HEADERS = _bcc_kernel_headers()
# --loader arguments per front end, for tests that run under each.
LOADER_ARGS = {"core": ["--loader", "core"], "bcc": ["--loader", "bcc"]}


def skip_reason(loader: str) -> str | None:
    if os.geteuid() != 0:
        return "kernel tests need root (CAP_BPF, CAP_PERFMON)"
    ring_ok, ring_text = ring_buffer_support()
    if not ring_ok:
        return f"BPF ring buffer: {ring_text}"
    if loader == "bcc":
        if importlib.util.find_spec("bcc") is None:
            return "BCC's Python module is missing (python3-bpfcc; `make setup` links it into .venv)"
        if BCC_KERNEL_HEADERS is None:
            return "no kernel headers for the BCC loader (`make setup` installs linux-headers)"
        return None
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        return "kernel has no BTF (/sys/kernel/btf/vmlinux): the CO-RE loader cannot run"
    if not (ROOT / "build/capture.bpf.o").exists():
        return "build/capture.bpf.o missing: run `make setup`"
    return None


def pytest_collection_modifyitems(config, items):
    reasons = {loader: skip_reason(loader) for loader in LOADER_ARGS}
    for item in items:
        if "tests/kernel" in str(item.fspath):
            item.add_marker(pytest.mark.kernel)
            callspec = getattr(item, "callspec", None)
            reason = reasons[callspec.params.get("agent_loader", "core") if callspec else "core"]
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


PASSED_THROUGH_ENV = ("OTEL_EBPF_HOOKS",)


class AgentProcess:
    """`otel-ebpf run` as a user starts it, exporting to the test's receiver."""

    def __init__(self, args: list[str], env: dict[str, str]):
        self.metrics_port = free_port()
        self.log = tempfile.NamedTemporaryFile("w+", prefix="otel-ebpf-", suffix=".log")
        self.stdout = tempfile.NamedTemporaryFile("w+", prefix="otel-ebpf-", suffix=".out")
        # The caller's OTEL_* settings stay out, but for the kernel matrix's
        # choice of hooks (scripts/kernel-matrix.sh runs the suite once per family).
        full_env = {k: v for k, v in os.environ.items()
                    if not k.startswith("OTEL_") or k in PASSED_THROUGH_ENV}
        full_env.update(env)
        full_env["PYTHONPATH"] = str(ROOT)
        self.proc = subprocess.Popen(
            AGENT + ["run", "--metrics-address", f"127.0.0.1:{self.metrics_port}", *args],
            stdout=self.stdout, stderr=self.log, env=full_env, cwd=ROOT)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 20.0) -> None:
        timeout *= TIME_SCALE
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}:\n{self.stderr()}")
            try:
                status, _ = http_get(f"http://127.0.0.1:{self.metrics_port}/readyz", timeout=1)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"agent not ready after {timeout}s:\n{self.stderr()}")

    def stderr(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def output(self) -> str:
        self.stdout.flush()
        self.stdout.seek(0)
        return self.stdout.read()

    def metrics(self) -> str:
        return http_get(f"http://127.0.0.1:{self.metrics_port}/metrics")[1].decode()

    def metric(self, name: str, **labels) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            key, _, value = line.rpartition(" ")
            metric_name, _, label_text = key.partition("{")
            if metric_name != name:
                continue
            if all(f'{k}="{v}"' in label_text for k, v in labels.items()):
                total += float(value)
        return total

    def stop(self, timeout: float = 5.0) -> float:
        """SIGTERM; returns how long the agent took to exit."""
        if self.proc.poll() is not None:
            return 0.0
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        return time.monotonic() - started


@pytest.fixture
def receiver():
    rx = OtlpReceiver()
    rx.start("http")
    yield rx
    rx.stop()


@pytest.fixture
def agent_loader() -> str | None:
    """The front end start_agent asks for; None: the agent's own choice.
    A module that runs under each overrides this with parameters."""
    return None


@pytest.fixture
def start_agent(receiver, agent_loader):
    agents = []

    def start(*args: str, protocol: str = "http/protobuf", extra_env: dict | None = None):
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
               "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
               "OTEL_BSP_SCHEDULE_DELAY": "200"}
        env.update(extra_env or {})
        agent = AgentProcess(LOADER_ARGS.get(agent_loader, []) + list(args), env)
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        agent.stop()


class TlsCertificate:
    """A self-signed certificate for 127.0.0.1 and localhost."""

    def __init__(self, directory: Path):
        self.cert = directory / "cert.pem"
        self.key = directory / "key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                        "-keyout", str(self.key), "-out", str(self.cert), "-days", "2",
                        "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                       check=True, capture_output=True)
        os.chmod(directory, 0o755)
        os.chmod(self.cert, 0o644)
        os.chmod(self.key, 0o644)


@pytest.fixture(scope="session")
def tls_certificate(tmp_path_factory):
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed (make setup installs it)")
    return TlsCertificate(tmp_path_factory.mktemp("tls"))


def start_backend(tls: TlsCertificate | None = None, env: dict | None = None):
    """The Python backend peer on a free port: (process, port)."""
    port = free_port()
    args = [sys.executable, str(PEERS / "backend.py"), str(port)]
    if tls is not None:
        args += ["--tls", str(tls.cert), str(tls.key)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE,
                            env={**os.environ, "OTEL_SERVICE_NAME": "test-backend", **(env or {})})
    proc.stdout.readline()
    wait_for_port(port)
    return proc, port


@pytest.fixture
def backend():
    proc, port = start_backend()
    yield port
    proc.terminate()
    proc.wait()


class Nginx:
    def __init__(self, directory: Path, port: int, backend_port: int | None, http2: bool = False,
                 tls: TlsCertificate | None = None, upstream_keepalive: bool = False):
        self.port = port
        self.directory = directory
        (directory / "html").mkdir()
        (directory / "html/index.html").write_text("<h1>hello</h1>\n")
        proxy = f"""
            location /api/ {{
                proxy_pass http://{"backend" if upstream_keepalive else f"127.0.0.1:{backend_port}"};
                proxy_http_version 1.1;
                proxy_set_header Connection "";
            }}""" if backend_port else ""
        conf = textwrap.dedent(f"""
            daemon off;
            user root;
            master_process on;
            worker_processes 1;
            pid {directory}/nginx.pid;
            error_log {directory}/error.log;
            events {{ worker_connections 1024; }}
            http {{
                access_log off;
                client_body_temp_path {directory};
                proxy_temp_path {directory};
                fastcgi_temp_path {directory};
                uwsgi_temp_path {directory};
                scgi_temp_path {directory};
                upstream backend {{ server 127.0.0.1:{backend_port or 9}; keepalive 8; }}
                server {{
                    listen 127.0.0.1:{port}{" ssl" if tls else ""}{" http2" if http2 else ""};
                    {f"ssl_certificate {tls.cert}; ssl_certificate_key {tls.key};" if tls else ""}
                    {"keepalive_requests 1000000; http2_max_requests 1000000;" if http2 else ""}
                    root {directory}/html;
                    location = /fast {{ return 200 "fast\\n"; }}
                    {proxy}
                }}
            }}
        """)
        (directory / "nginx.conf").write_text(conf)
        self.proc = subprocess.Popen(["nginx", "-c", str(directory / "nginx.conf"),
                                      "-p", str(directory)])
        wait_for_port(port)

    def pid_args(self) -> list[str]:
        """`--pid` arguments selecting this nginx's master and workers only.
        The master listens before it forks its worker: the port answering
        does not mean the worker exists yet, so wait for it."""
        deadline = time.monotonic() + 10
        while True:
            with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
                workers = [int(p) for p in f.read().split()]
            if workers or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert workers, "nginx forked no worker within 10 s"
        return [arg for pid in [self.proc.pid, *workers] for arg in ("--pid", str(pid))]

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


@pytest.fixture
def start_nginx(tmp_path):
    if not shutil.which("nginx"):
        pytest.skip("nginx is not installed (make setup installs nginx-light)")
    servers = []

    def start(backend_port: int | None = None, http2: bool = False,
              tls: TlsCertificate | None = None, upstream_keepalive: bool = False) -> Nginx:
        """http2: HTTP/2 (with prior knowledge, h2c, unless tls) instead of HTTP/1;
        tls: HTTPS with this certificate; upstream_keepalive: /api/ through
        the upstream block, whose connections nginx keeps open."""
        directory = tmp_path / f"nginx{len(servers)}"
        directory.mkdir()
        server = Nginx(directory, free_port(), backend_port, http2, tls, upstream_keepalive)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def curl(url: str, *headers: str, extra: list[str] | None = None) -> dict:
    """Runs curl; returns status and timings (seconds) as curl measured them."""
    cmd = ["curl", "-s", "-o", "/dev/null", "-w",
           "%{http_code} %{time_total} %{local_port}"]
    for header in headers:
        cmd += ["-H", header]
    cmd += (extra or []) + [url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()
    return {"status": int(out[0]), "time_total": float(out[1]), "local_port": int(out[2])}


CAPTURE_PROGRAM_PREFIXES = ("rtp_sys_", "tp_enter_", "tp_exit_", "ks_enter_", "ks_exit_",
                            "fe_enter_", "fe_exit_")


def loaded_programs() -> list[dict]:
    import json
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout or "[]")


def capture_programs_of(pid: int) -> set[int]:
    """Ids of the capture programs process `pid` holds."""
    return programs_of(pid, CAPTURE_PROGRAM_PREFIXES)


def programs_of(pid: int, prefixes: tuple[str, ...]) -> set[int]:
    """Ids of the programs process `pid` holds whose names start with one
    of prefixes, read from the prog_id lines of its BPF program and link
    fds in /proc/PID/fdinfo."""
    held = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                for line in f:
                    if line.startswith("prog_id:"):
                        held.add(int(line.split()[1]))
        except OSError:
            continue
    return {p["id"] for p in loaded_programs()
            if p["id"] in held and p.get("name", "").startswith(prefixes)}


def programs_still_loaded(ids: set[int]) -> set[int]:
    return ids & {p["id"] for p in loaded_programs()}
