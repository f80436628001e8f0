"""asyncpg over TLS (asyncio's memory-BIO TLS) to PostgreSQL.
Usage: asyncpg_client.py HOST PORT USER DATABASE COUNT
Waits for a line on stdin, then runs COUNT queries on one TLS connection,
prints each result, then "done"."""
import asyncio
import ssl
import sys


async def main(host: str, port: int, user: str, database: str, count: int) -> None:
    import asyncpg
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE     # the test server's self-signed certificate
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    conn = await asyncpg.connect(host=host, port=port, user=user, database=database, ssl=context)
    try:
        assert conn.get_server_version().major >= 12
        for i in range(1, count + 1):
            print(await conn.fetchval("SELECT count(*) FROM tls_orders WHERE id > $1", i),
                  flush=True)
    finally:
        await conn.close()
    print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])))
