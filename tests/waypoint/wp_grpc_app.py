"""gRPC test app for pods: `python wp_grpc_app.py server NAME PORT` or `... client TARGET COUNT [METADATA=V]`.

No generated code: a generic handler with bytes in and out. The server
answers /test.Greeter/Say with "NAME: <request>"; the client makes COUNT
unary calls and prints one JSON line per call (reply, or the status code).
"""

import asyncio
import json
import sys

import grpc


async def server(name: str, port: int) -> None:
    async def say(request: bytes, context) -> bytes:
        return f"{name}: ".encode() + request

    srv = grpc.aio.server()
    srv.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "test.Greeter", {"Say": grpc.unary_unary_rpc_method_handler(say)}),))
    srv.add_insecure_port(f"0.0.0.0:{port}")
    await srv.start()
    print(json.dumps({"ready": name, "port": port}), flush=True)
    await srv.wait_for_termination()


async def client(target: str, count: int, metadata: list[tuple[str, str]]) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary("/test.Greeter/Say")
        for i in range(count):
            try:
                reply = await call(f"hello {i}".encode(), timeout=10, metadata=metadata)
                print(json.dumps({"reply": reply.decode()}), flush=True)
            except grpc.aio.AioRpcError as e:
                print(json.dumps({"code": e.code().name, "details": e.details()}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        asyncio.run(server(sys.argv[2], int(sys.argv[3])))
    else:
        meta = [tuple(a.split("=", 1)) for a in sys.argv[4:]]
        asyncio.run(client(sys.argv[2], int(sys.argv[3]), meta))
