"""A pod's own resolver for the DNS proxy's end-to-end test: `python dns_resolver_app.py ADDRESS PORT`.

Real UDP and TCP DNS on ADDRESS:PORT. It knows one name, `other.test`
(A 198.18.48.99); every other name is NXDOMAIN. Each query it receives is
logged as one JSON line (transport, name), so the test can tell what was
forwarded to it and what the proxy answered itself.
"""

import json
import socket
import sys
import threading

from shoal import dns_message as dm

ADDRESS, PORT = sys.argv[1], int(sys.argv[2])


def answer(data: bytes, transport: str) -> bytes:
    query = dm.parse_query(data)
    print(json.dumps({"transport": transport, "name": query.question.name}), flush=True)
    if query.question.name == "other.test":
        return dm.build_response(query, dm.NOERROR, ("198.18.48.99",), authoritative=False)
    return dm.build_response(query, dm.NXDOMAIN, authoritative=False)


def serve_udp(sock: socket.socket) -> None:
    while True:
        data, peer = sock.recvfrom(4096)
        sock.sendto(answer(data, "udp"), peer)


def serve_tcp_client(conn: socket.socket) -> None:
    with conn:
        framer = dm.TcpFramer()
        while chunk := conn.recv(4096):
            for message in framer.feed(chunk):
                conn.sendall(dm.frame(answer(message, "tcp")))


udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind((ADDRESS, PORT))
tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind((ADDRESS, PORT))
tcp.listen(16)
threading.Thread(target=serve_udp, args=(udp,), daemon=True).start()
print(json.dumps({"ready": f"{ADDRESS}:{PORT}"}), flush=True)
while True:
    client, _ = tcp.accept()
    threading.Thread(target=serve_tcp_client, args=(client,), daemon=True).start()
