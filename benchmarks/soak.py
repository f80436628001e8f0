"""Soak: mixed HTTP traffic for a long time; reports the agent's memory and
CPU over time.  Root, after `make setup`:

    .venv/bin/python benchmarks/soak.py [--minutes 10] [--rate 300]

Traffic, all on 127.0.0.1: keep-alive and one-shot requests through nginx
(reverse proxy) to a Python backend, unique paths and query strings (state
keyed by them must not grow), 4xx/5xx answers, requests carrying a
traceparent, connections that close mid-request, and malformed requests.
The agent exports OTLP to a counting receiver in its own process.  Every 30 s
it prints RSS of the agent's processes, CPU used, spans exported and losses.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / "tests/kernel/peers"
sys.path.insert(0, str(ROOT / "tests"))

from loopback import free_port  # noqa: E402
NGINX_CONF = """daemon off; user root; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;
events {{ worker_connections 1024; }}
http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};
uwsgi_temp_path {d}; scgi_temp_path {d};
upstream backend {{ server 127.0.0.1:{backend}; keepalive 8; }}
server {{ listen 127.0.0.1:{port};
  location /api/ {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  location / {{ return 200 "ok\\n"; }} }} }}
"""


def metrics(port: int) -> dict:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        key, value = line.rsplit(" ", 1)
        name = key.split("{", 1)[0]
        out[name] = out.get(name, 0.0) + float(value)
        out[key] = float(value)
    return out


def traffic(port: int, rate: float, stop: threading.Event, stats: dict) -> None:
    rng = random.Random(7)
    interval = 1.0 / rate
    keepalive = None
    next_at = time.monotonic()
    n = 0
    while not stop.is_set():
        n += 1
        kind = rng.random()
        path = f"/api/items/{rng.randrange(10**9)}?q={rng.randrange(10**6)}"
        try:
            if kind < 0.6:
                if keepalive is None:
                    keepalive = socket.create_connection(("127.0.0.1", port), timeout=5)
                tp = f"traceparent: 00-{rng.getrandbits(128):032x}-{rng.getrandbits(64):016x}-01\r\n" \
                    if n % 2 else ""
                keepalive.sendall(f"GET {path} HTTP/1.1\r\nHost: soak\r\n{tp}\r\n".encode())
                data = b""
                while b"\r\n\r\n" not in data or not data.endswith(b"ok\n"):
                    chunk = keepalive.recv(65536)
                    if not chunk:
                        raise OSError("closed")
                    data += chunk
            elif kind < 0.8:
                code = rng.choice([200, 404, 500, 503])
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status/{code}", timeout=5).read()
            elif kind < 0.9:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read()
            elif kind < 0.95:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                    s.sendall(f"GET {path} HTTP/1.1\r\nHost: soak\r\n".encode())   # never finished
            else:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                    s.sendall(bytes(rng.randrange(256) for _ in range(64)) + b"\r\n\r\n")
                    s.settimeout(0.5)
                    try:
                        s.recv(4096)
                    except OSError:
                        pass
            stats["sent"] += 1
        except OSError:
            stats["errors"] += 1
            if keepalive is not None:
                keepalive.close()
                keepalive = None
        except Exception:   # urllib raises HTTPError for 4xx/5xx: still a real exchange
            stats["sent"] += 1
        next_at += interval
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=300.0, help="requests/s")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root")
    with tempfile.TemporaryDirectory() as d:
        backend_port, nginx_port, metrics_port = free_port(), free_port(), free_port()
        backend = subprocess.Popen([sys.executable, str(PEERS / "backend.py"), str(backend_port)],
                                   stdout=subprocess.PIPE)
        backend.stdout.readline()
        Path(d, "nginx.conf").write_text(NGINX_CONF.format(d=d, port=nginx_port, backend=backend_port))
        nginx = subprocess.Popen(["nginx", "-c", f"{d}/nginx.conf", "-p", d])
        collector = subprocess.Popen([sys.executable, str(PEERS / "receiver.py")],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        endpoint = collector.stdout.readline().strip()
        agent = subprocess.Popen([str(ROOT / ".venv/bin/otel-ebpf"), "run", "--port", str(nginx_port),
                                  "--port", str(backend_port), "--metrics-address",
                                  f"127.0.0.1:{metrics_port}"],
                                 env={**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint},
                                 stderr=subprocess.DEVNULL)
        time.sleep(3)
        stop = threading.Event()
        stats = {"sent": 0, "errors": 0}
        thread = threading.Thread(target=traffic, args=(nginx_port, args.rate, stop, stats))
        thread.start()
        started = time.monotonic()
        first = None
        print(f"{'min':>5} {'sent':>8} {'rss main MiB':>12} {'rss workers MiB':>15} {'cpu s':>7} "
              f"{'spans exported':>14} {'kernel lost':>11} {'no response':>11} {'conns':>6}")
        try:
            while time.monotonic() - started < args.minutes * 60:
                time.sleep(30)
                m = metrics(metrics_port)
                row = (
                    (time.monotonic() - started) / 60, stats["sent"],
                    m.get('otel_ebpf_process_resident_memory_bytes{process="main"}', 0) / 2**20,
                    m.get('otel_ebpf_process_resident_memory_bytes{process="span_worker"}', 0) / 2**20,
                    m.get("otel_ebpf_process_cpu_seconds_total", 0),
                    m.get("otel_ebpf_spans_exported_total", 0),
                    m.get("otel_ebpf_kernel_events_lost_total", 0),
                    m.get("otel_ebpf_requests_without_response_total", 0),
                    m.get('otel_ebpf_tracked{entity="connections"}', 0))
                first = first or row
                print(f"{row[0]:5.1f} {row[1]:8d} {row[2]:12.1f} {row[3]:15.1f} {row[4]:7.1f} "
                      f"{row[5]:14.0f} {row[6]:11.0f} {row[7]:11.0f} {row[8]:6.0f}", flush=True)
        finally:
            stop.set()
            thread.join()
            agent.terminate()
            agent.wait()
            for proc in (nginx, backend):
                proc.terminate()
                proc.wait()
            collector.stdin.write("counts\n")
            collector.stdin.flush()
            counts = json.loads(collector.stdout.readline())
            collector.stdin.close()
            collector.wait()
        last = row
        print(f"\nRSS growth from minute {first[0]:.1f} to {last[0]:.1f}: main "
              f"{last[2] - first[2]:+.1f} MiB, workers {last[3] - first[3]:+.1f} MiB; "
              f"agent CPU {last[4] / (last[0] * 60):.1%} of a core on average; "
              f"requests sent {stats['sent']} (errors {stats['errors']}); spans received {counts}")


if __name__ == "__main__":
    main()
