"""Tiny test apps run inside pod namespaces: `python zt_apps.py http PORT | echo PORT | send HOST PORT N`.

- http: answers any request with "peer=<client ip>" so tests can see the source IP the app saw;
- echo: echoes every byte until the client half-closes, then closes;
- send: connects, sends N bytes, half-closes, prints how many bytes came back.
"""

import socket
import sys
import threading


def serve(port, handle):
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", port))
    sock.listen(64)
    print("ready", flush=True)
    while True:
        conn, peer = sock.accept()
        threading.Thread(target=handle, args=(conn, peer), daemon=True).start()


def http(conn, peer):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    body = f"peer={peer[0]}\n".encode()
    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
    conn.close()


def echo(conn, peer):
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            break
        conn.sendall(chunk)
    conn.close()


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
        serve(int(sys.argv[2]), {"http": http, "echo": echo}[mode])
