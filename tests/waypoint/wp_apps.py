"""A test HTTP app run inside pod namespaces: `python wp_apps.py NAME PORT [--fail-every-other]`.

A real `http.server` (HTTP/1.1, keep-alive). It answers "NAME METHOD PATH"
and logs one JSON line per request (name, method, path, host, peer, the
body's size and sha256) to
stdout, so tests read hits from `shoal local logs`. With
`--fail-every-other` it answers 503 to the 1st, 3rd, 5th... request.
"""

import hashlib
import http.server
import json
import sys
import threading

NAME, PORT = sys.argv[1], int(sys.argv[2])
FLAKY = "--fail-every-other" in sys.argv[3:]
count = 0
lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True   # head and body are two writes: no 40 ms delayed-ACK stall on kept-alive connections

    def _answer(self):
        global count
        length = int(self.headers.get("content-length") or 0)
        digest, size = hashlib.sha256(), 0
        while size < length:   # in pieces, digested: an upload of any size costs this app no memory
            piece = self.rfile.read(min(1 << 16, length - size))
            if not piece:
                break
            digest.update(piece)
            size += len(piece)
        with lock:
            count += 1
            n = count
        status = 503 if FLAKY and n % 2 == 1 else 200
        print(json.dumps({"hit": NAME, "n": n, "method": self.command, "path": self.path,
                          "host": self.headers.get("host"), "peer": self.client_address[0], "status": status,
                          "size": size, "sha256": digest.hexdigest()}),
              flush=True)
        body = f"{NAME} {self.command} {self.path}\n".encode()
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_HEAD = _answer

    def log_message(self, *args):
        pass


class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 128
    daemon_threads = True


print(json.dumps({"ready": NAME, "port": PORT}), flush=True)
Server(("0.0.0.0", PORT), Handler).serve_forever()
