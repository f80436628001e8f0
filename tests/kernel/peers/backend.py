"""A small HTTP/1.1 keep-alive backend for kernel tests.

GET /status/<code> answers with that status (also under /api/, as nginx
forwards it); /slow/<ms> waits first; anything else answers 200 "ok".
Listens on 127.0.0.1:<port> (or the address in BACKEND_HOST: a test network
namespace's); with `--tls CERT KEY` it speaks HTTPS (Python's ssl module,
OpenSSL underneath).
"""
import os
import ssl
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Head and body go out in two writes: without TCP_NODELAY the second
    # waits for the client's delayed ACK, 40 ms per keep-alive request.
    disable_nagle_algorithm = True

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        parts = self.path.split("?", 1)[0].strip("/").split("/")
        if parts[0] == "api" and len(parts) > 1:
            parts = parts[1:]
        code = 200
        if parts[0] == "status" and len(parts) > 1 and parts[1].isdigit():
            code = int(parts[1])
        elif parts[0] == "slow" and len(parts) > 1 and parts[1].isdigit():
            time.sleep(int(parts[1]) / 1000)
        body = b"ok\n"
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _answer

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    server = ThreadingHTTPServer((os.environ.get("BACKEND_HOST", "127.0.0.1"), int(sys.argv[1])),
                                 Handler)
    server.daemon_threads = True
    if sys.argv[2:3] == ["--tls"]:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(sys.argv[3], sys.argv[4])
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print("ready", flush=True)
    server.serve_forever()
