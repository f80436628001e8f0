"""aiohttp over https (asyncio's memory-BIO TLS).
Usage: aiohttp_client.py URL COUNT CACERT TRACEPARENT_PREFIX
Waits for a line on stdin, then sends COUNT GETs one after another,
request i with traceparent PREFIX + (i as 16 hex digits) + "-01"; prints
each status, then "done"."""
import asyncio
import ssl
import sys


async def main(url: str, count: int, cacert: str, prefix: str) -> None:
    import aiohttp
    context = ssl.create_default_context(cafile=cacert)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    async with aiohttp.ClientSession() as session:
        for i in range(1, count + 1):
            headers = {"traceparent": f"{prefix}{i:016x}-01"}
            async with session.get(url, ssl=context, headers=headers) as response:
                await response.read()
                print(response.status, flush=True)
    print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]))
