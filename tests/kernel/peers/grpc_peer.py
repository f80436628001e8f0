"""A grpcio peer for the kernel tests, in a process of its own.

    grpc_peer.py server          prints the port, serves until stdin closes
    grpc_peer.py client PORT TRACEPARENT
                                 unary, server-streaming, client-streaming
                                 and bidi calls, then one UNAVAILABLE and one
                                 NOT_FOUND; prints one JSON line of results

The service is tests/fixtures/capture_http2.py's (generic handlers, bytes)."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "fixtures"))

import grpc  # noqa: E402

from capture_http2 import SERVICE, _grpc_server  # noqa: E402


def client(port: int, traceparent: str) -> dict:
    metadata = (("traceparent", traceparent),)
    results = {}
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        unary = channel.unary_unary(f"/{SERVICE}/SayHello")
        results["SayHello"] = unary(b"world", metadata=metadata, timeout=10).decode()
        results["SayHelloStream"] = len(list(channel.unary_stream(f"/{SERVICE}/SayHelloStream")(
            b"stream", metadata=metadata, timeout=10)))
        results["CollectHellos"] = channel.stream_unary(f"/{SERVICE}/CollectHellos")(
            iter([b"a", b"b", b"c"]), metadata=metadata, timeout=10).decode()
        results["Chat"] = len(list(channel.stream_stream(f"/{SERVICE}/Chat")(
            iter([b"one", b"two"]), metadata=metadata, timeout=10)))
        for name in (b"unavailable", b"missing"):
            try:
                unary(name, metadata=metadata, timeout=10)
                results[name.decode()] = "OK"
            except grpc.RpcError as error:
                results[name.decode()] = error.code().name
    return results


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server, port = _grpc_server()
        print(port, flush=True)
        sys.stdin.read()
        server.stop(None)
    else:
        print(json.dumps(client(int(sys.argv[2]), sys.argv[3])), flush=True)
