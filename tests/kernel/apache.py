"""A private Apache 2.4 (Debian's apache2) with mod_ssl and mod_http2 on a
free loopback port, for the TLS kernel tests."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from loopback import free_port, wait_for_port

MODULES = Path("/usr/lib/apache2/modules")
FILES = 20


class ApacheTls:
    def __init__(self, cert: Path, key: Path):
        # Apache's workers run as www-data: everything they read must be
        # reachable by others (pytest's own temporary tree is not).
        directory = Path(tempfile.mkdtemp(prefix="otel-ebpf-apache-"))
        self.port = free_port()
        self.root = directory
        docs = directory / "htdocs"
        docs.mkdir()
        for i in range(1, FILES + 1):
            (docs / f"f{i}.txt").write_text(f"file {i}\n")
        (directory / "logs").mkdir()
        conf = directory / "httpd.conf"
        conf.write_text(f"""\
ServerRoot {directory}
ServerName localhost
Listen 127.0.0.1:{self.port}
LoadModule mpm_event_module {MODULES}/mod_mpm_event.so
LoadModule authz_core_module {MODULES}/mod_authz_core.so
LoadModule mime_module {MODULES}/mod_mime.so
LoadModule ssl_module {MODULES}/mod_ssl.so
LoadModule http2_module {MODULES}/mod_http2.so
TypesConfig /etc/mime.types
User www-data
Group www-data
PidFile {directory}/logs/httpd.pid
ErrorLog {directory}/logs/error.log
DocumentRoot {docs}
<Directory {docs}>
  Require all granted
</Directory>
Protocols h2 http/1.1
SSLEngine on
SSLCertificateFile {cert}
SSLCertificateKeyFile {key}
""")
        for path in [directory, docs, directory / "logs", *docs.iterdir()]:
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        self.process = subprocess.Popen(["apache2", "-f", str(conf), "-DFOREGROUND"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for_port(self.port, process=self.process, name="apache2")

    def url(self, i: int) -> str:
        return f"https://127.0.0.1:{self.port}/f{i}.txt"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(name="apache_tls")
def apache_tls_fixture(tls_certificate):
    if not shutil.which("apache2") or not (MODULES / "mod_http2.so").exists():
        pytest.skip("Debian's apache2 is not installed (make setup installs it)")
    server = ApacheTls(tls_certificate.cert, tls_certificate.key)
    yield server
    server.stop()
