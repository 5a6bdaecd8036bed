"""The local kubelet's httpGet probe (shoal/local/kubelet.py), on loopback against Python's http.server:
Host brackets an IPv6 address, and the answer is read to its end, so a server still writing it is not reset
(http.server logged a ConnectionResetError traceback for every readiness probe)."""

from __future__ import annotations

import asyncio
import http.server
import socket
import threading
import time

import pytest

from shoal.local.kubelet import answer_complete, http_probe, probe_passed, probe_request

BODY = b"ready\n" * 1000  # 6 KB: more than the status line, less than the probe reads


def test_the_host_field_brackets_an_ipv6_address_and_not_an_ipv4_one():
    assert b"\r\nHost: [fd73:686f:616c::5]:15021\r\n" in probe_request("fd73:686f:616c::5", 15021, "/healthz")
    assert b"\r\nHost: 198.18.0.5:8080\r\n" in probe_request("198.18.0.5", 8080, "/")


def test_success_is_a_status_of_200_to_399_and_an_answer_ends_where_its_length_says():
    assert probe_passed(b"HTTP/1.1 204 No Content\r\n\r\n") and probe_passed(b"HTTP/1.0 302 Found\r\n")
    assert not probe_passed(b"HTTP/1.1 503 Unavailable\r\n\r\n") and not probe_passed(b"")
    assert answer_complete(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert not answer_complete(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok")
    assert answer_complete(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
    assert not answer_complete(b"HTTP/1.1 200 OK\r\n\r\nok")  # no length: only the close ends it


class SlowWriter(http.server.BaseHTTPRequestHandler):
    """Writes the head and a first part, then the rest a moment later, as a busy app does."""

    def do_GET(self):
        self.server.hosts.append(self.headers["Host"])
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY[:100])
        self.wfile.flush()
        time.sleep(0.2)  # the app is slow to write the rest; a probe that left already is not there to take it
        self.wfile.write(BODY[100:])

    def log_message(self, *args):
        pass


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins the handlers: their last write is done, or has failed

    def __init__(self, host: str, family: int):
        self.address_family = family
        self.hosts, self.errors = [], []
        super().__init__((host, 0), SlowWriter)

    def handle_error(self, request, client_address):  # where http.server prints its traceback
        import sys
        self.errors.append(repr(sys.exc_info()[1]))


@pytest.mark.parametrize("host,family", [("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6)])
def test_a_probe_reads_the_whole_answer_and_the_server_logs_no_reset(host, family):
    try:
        server = Server(host, family)
    except OSError as e:
        pytest.skip(f"no {host} here: {e}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]

        async def probe():
            with socket.socket(family) as sock:
                sock.setblocking(False)
                await asyncio.get_running_loop().sock_connect(sock, (host, port))
                return await http_probe(sock, host, port, "/ready")
        assert asyncio.run(probe())
        server.shutdown()
        server.server_close()
        assert server.errors == []
        assert server.hosts == [f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"]
    finally:
        server.shutdown()
        server.server_close()


def test_a_ready_container_is_probed_less_often_than_one_starting(monkeypatch):
    """Start-up readiness is seen within PROBE_PERIOD; once ready, a probe every READY_PROBE_PERIOD, so that an
    idle cluster does not wake the kubelet and every probed proxy twice a second."""
    import types

    from shoal.local import kubelet

    answers = iter([False, False, True, True, False, True])
    waits = []
    container = types.SimpleNamespace(probe={"tcpSocket": {"port": 1}}, running=True, ready=False)
    marks = []

    async def probe_once(runtime, probe):
        try:
            return next(answers)
        except StopIteration:
            container.running = False
            return container.ready

    async def sleep(seconds):
        waits.append((container.ready, seconds))
    monkeypatch.setattr(kubelet, "probe_once", probe_once)
    monkeypatch.setattr(kubelet.asyncio, "sleep", sleep)
    owner = types.SimpleNamespace(_mark=lambda runtime: marks.append(container.ready))
    asyncio.run(kubelet.Kubelet._probe(owner, object(), container))
    assert [seconds for _, seconds in waits] == [kubelet.PROBE_PERIOD] * 2 + [kubelet.READY_PROBE_PERIOD] * 2 + \
        [kubelet.PROBE_PERIOD, kubelet.READY_PROBE_PERIOD, kubelet.READY_PROBE_PERIOD]
    assert kubelet.READY_PROBE_PERIOD > kubelet.PROBE_PERIOD
    assert marks == [True, False, True]   # each change of readiness written, and only those


def test_a_cgroup_the_kernel_is_removing_has_no_processes(tmp_path, monkeypatch):
    """Reading cgroup.procs of a cgroup being removed fails with ENODEV: that cgroup holds no process
    (the fault suite read one just as the kubelet removed the control plane's pod)."""
    import errno
    from pathlib import Path
    from shoal.local.kubelet import cgroup_pids

    (tmp_path / "cgroup.procs").write_text("12\n34\n")
    assert cgroup_pids(tmp_path) == [12, 34]
    assert cgroup_pids(tmp_path / "gone") == []

    def removing(self, *args, **kwargs):
        raise OSError(errno.ENODEV, "No such device")
    monkeypatch.setattr(Path, "read_text", removing)
    assert cgroup_pids(tmp_path) == []

    def other(self, *args, **kwargs):
        raise OSError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(Path, "read_text", other)
    with pytest.raises(PermissionError):
        cgroup_pids(tmp_path)
