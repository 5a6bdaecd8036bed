"""The node agent's CNI socket: where shoal-cni (cni_plugin.py) asks for a sandbox to be captured or released.

A node-local unix SOCK_STREAM socket, served by the agent process that also
serves the hand-off socket, opened at the same moment (once the first list is
reconciled: an agent that is not ready does not answer, and the plugin makes
enrolled pods wait). One JSON request line, one JSON reply line (the plugin's
docstring gives the fields). `CniRequest.parse` turns the line into a frozen
request at the edge; the agent's handler returns a `CniReply`.

The socket is made 0600: only root on the node (the runtime that runs the
plugin) talks to it.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

from shoal import log

from node_agent.model import canonical_addresses
from node_agent.errors import NodeAgentError

logger = log.get("node_agent.cni")

MAX_REQUEST = 64 * 1024
COMMANDS = ("ADD", "DEL", "CHECK")


class CniRequestError(NodeAgentError):
    """A request on the CNI socket that the agent cannot act on."""


@dataclass(frozen=True)
class CniRequest:
    command: str
    container_id: str
    netns: str
    namespace: str
    name: str
    uid: str
    ips: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def addresses(self) -> tuple[str, ...]:
        """The pod's addresses of both families, in the CNI result's order (its first is the primary), in one
        text form; what is not an address is left out (the API's podIPs still count)."""
        out = []
        for address in self.ips:
            try:
                out.extend(canonical_addresses([address]))
            except ValueError:
                continue
        return tuple(dict.fromkeys(out))

    @classmethod
    def parse(cls, line: bytes) -> "CniRequest":
        try:
            raw = json.loads(line)
        except ValueError as e:
            raise CniRequestError(f"the request is not JSON ({e})") from None
        if not isinstance(raw, dict):
            raise CniRequestError("the request is not a JSON object")
        command = raw.get("command")
        if command not in COMMANDS:
            raise CniRequestError(f"unknown command {command!r}; one of {', '.join(COMMANDS)}")
        fields = {name: raw.get(name) or "" for name in ("container_id", "netns", "namespace", "name", "uid")}
        if not all(isinstance(value, str) for value in fields.values()):
            raise CniRequestError("container_id, netns, namespace, name and uid must be strings")
        if not fields["namespace"] or not fields["name"]:
            raise CniRequestError("the pod's namespace and name are missing (K8S_POD_NAMESPACE, K8S_POD_NAME in "
                                  "CNI_ARGS)")
        if command != "DEL" and not fields["netns"].startswith("/"):
            raise CniRequestError(f"netns {fields['netns']!r} is not an absolute path (CNI_NETNS)")
        ips = raw.get("ips") or []
        if not isinstance(ips, list) or not all(isinstance(ip, str) for ip in ips):
            raise CniRequestError("ips must be a list of strings")
        return cls(command, ips=tuple(ips), **fields)


@dataclass(frozen=True)
class CniReply:
    ok: bool
    enrolled: bool = False
    error: str = ""

    def encode(self) -> bytes:
        return json.dumps({"ok": self.ok, "enrolled": self.enrolled, "error": self.error}).encode() + b"\n"


Handler = Callable[[CniRequest], Awaitable[CniReply]]


class CniServer:
    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = Path(path)
        self.handler = handler
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)  # a socket left by an agent that was killed
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=MAX_REQUEST)
        os.chmod(self.path, 0o600)
        logger.info("CNI socket open", path=str(self.path))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
            self.path.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                line = await reader.readuntil(b"\n")
                request = CniRequest.parse(line)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError) as e:
                logger.warning("CNI request not read", error=str(e) or type(e).__name__)
                return
            except CniRequestError as e:
                writer.write(CniReply(False, error=f"bad request from shoal-cni: {e}").encode())
                await writer.drain()
                return
            try:
                reply = await self.handler(request)
            except (NodeAgentError, OSError) as e:
                reply = CniReply(False, error=str(e))
            writer.write(reply.encode())
            await writer.drain()
        except ConnectionError:
            pass  # the plugin gave up (its runtime's timeout); the next call asks again
        finally:
            writer.close()
