"""Small network helpers: a free loopback port, IPv6 on loopback or not, and an HTTP GET that may run in a
network namespace."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

from shoal import netns as netns_module


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (another process may take it before the test does)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def loopback_has_ipv6() -> bool:
    """Can a socket bind [::1]? (not where the kernel or the namespace has IPv6 off)"""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def http_get(url: str, netns: str | None = None, timeout: float = 5.0) -> tuple[int, str]:
    """(status, body) of GET `url`, from inside network namespace `netns` if given; (0, "") when
    nothing answers, so that a test can wait for a server that is still starting."""
    def get() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError:
            return 0, ""

    return netns_module.run_in(netns, get) if netns else get()
