"""A short-lived PostgreSQL client over TLS: after `delay` seconds it
imports psycopg (whose binary wheel maps its own private libssl), runs N
statements with sslmode=require at once and exits.  Prints each answer,
then "done"."""
import sys
import time

dsn, count, delay = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
time.sleep(delay)
import psycopg  # noqa: E402  (mapped late on purpose)

with psycopg.connect(dsn, autocommit=True) as conn:
    for i in range(count):
        print(conn.execute("SELECT %s::int + 1", (i,)).fetchone()[0], flush=True)
print("done", flush=True)
