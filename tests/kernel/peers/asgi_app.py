"""A minimal ASGI app for uvicorn (no framework): 200 with the path, 404
under /missing."""


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    status = 404 if scope["path"].startswith("/missing") else 200
    body = f"ok {scope['path']}\n".encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
