"""An HTTP service that answers each request after a database query made
on the thread serving it: GET /orders/<id> runs one SELECT on PostgreSQL.

Usage: db_backend.py PORT DSN   (listens on 127.0.0.1:PORT)
"""
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg

local = threading.local()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if not hasattr(local, "conn"):
            local.conn = psycopg.connect(sys.argv[2], autocommit=True)
        order = self.path.rstrip("/").rpartition("/")[2]
        rows = local.conn.execute("SELECT count(*) FROM pg_class WHERE oid > %s",
                                  (int(order) if order.isdigit() else 0,)).fetchall()
        body = f"{rows[0][0]}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.daemon_threads = True
    print("ready", flush=True)
    server.serve_forever()
