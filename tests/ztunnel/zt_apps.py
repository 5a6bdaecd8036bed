"""Tiny test apps run inside pod namespaces: `python zt_apps.py http PORT [ADDRESS] | echo PORT [ADDRESS] |
send HOST PORT N`.

- http: answers any request with "peer=<client ip>" so tests can see the source IP the app saw;
- echo: echoes every byte until the client half-closes, then closes;
- send: connects, sends N bytes, half-closes, prints how many bytes came back.

The servers print "ready" once they listen, on 0.0.0.0 unless ADDRESS says otherwise (`::` listens on
both families with one socket).
"""

import socket
import socketserver
import sys
import threading


class Http(socketserver.StreamRequestHandler):
    def handle(self):
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass  # the request's head; its content does not matter
        body = f"peer={self.client_address[0]}\n".encode()
        self.wfile.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))


class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while chunk := self.request.recv(65536):
            self.request.sendall(chunk)


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 64


class Server6(Server):
    address_family = socket.AF_INET6

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def serve(port, handler, address="0.0.0.0"):
    with (Server6 if ":" in address else Server)((address, port), handler) as server:
        print("ready", flush=True)
        server.serve_forever()


def send(host, port, count):
    sock = socket.create_connection((host, port), timeout=10)
    received = [0]

    def reader():
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return
            received[0] += len(chunk)

    t = threading.Thread(target=reader)
    t.start()
    block = b"s" * 65536
    left = count
    while left > 0:
        n = sock.send(block[:min(left, len(block))])
        left -= n
    sock.shutdown(socket.SHUT_WR)
    t.join(20)
    print(received[0], flush=True)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "send":
        send(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        serve(int(sys.argv[2]), {"http": Http, "echo": Echo}[mode], *sys.argv[3:4])
