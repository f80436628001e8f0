"""The servers under load, each a fresh instance per row: nginx, and
gunicorn serving benchmarks/wrk/app.py."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from loopback import free_port, wait_for_port  # noqa: E402
from processes import children, stop_process  # noqa: E402

HERE = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent


class Nginx:
    name = "nginx"

    def __init__(self, workdir: Path, env: dict | None = None):
        self.dir = Path(tempfile.mkdtemp(prefix="nginx-", dir=workdir))
        self.port = free_port()
        conf = textwrap.dedent(f"""
            daemon off;
            user root;
            master_process on;
            worker_processes 1;
            pid {self.dir}/nginx.pid;
            error_log {self.dir}/error.log;
            events {{ worker_connections 4096; }}
            http {{
                access_log off;
                keepalive_requests 1000000;
                client_body_temp_path {self.dir};
                proxy_temp_path {self.dir};
                fastcgi_temp_path {self.dir};
                uwsgi_temp_path {self.dir};
                scgi_temp_path {self.dir};
                server {{
                    listen 127.0.0.1:{self.port};
                    location / {{ return 200 "ok\\n"; }}
                }}
            }}
        """)
        (self.dir / "nginx.conf").write_text(conf)
        self.proc = subprocess.Popen(["nginx", "-c", str(self.dir / "nginx.conf"), "-p", str(self.dir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)
        self.pids = self._pids(1)

    def _pids(self, workers: int) -> list[int]:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            kids = children(self.proc.pid)
            if len(kids) >= workers:
                return [self.proc.pid, *kids]
            time.sleep(0.05)
        raise RuntimeError(f"{self.name}: workers did not start")

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGQUIT)   # nginx: graceful; SIGTERM is fast
        shutil.rmtree(self.dir, ignore_errors=True)


class Gunicorn(Nginx):
    name = "python"

    def __init__(self, workdir: Path, workers: int, threads: int, env: dict | None = None):
        self.port = free_port()
        self.dir = None
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "gunicorn"), "-w", str(workers), "-k", "gthread", "--threads", str(threads),
             "-b", f"127.0.0.1:{self.port}", "--backlog", "2048", "--keep-alive", "60",
             "--log-level", "warning", "--chdir", str(HERE), "app:app"],
            env=full_env, stdout=subprocess.DEVNULL, stderr=open(workdir / "gunicorn.log", "a"))
        wait_for_port(self.port)
        self.pids = self._pids(workers)

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGTERM)
