"""Pod sandboxes from the container runtime, over CRI: how the agent finds pods that started before it.

The CRI (`runtime.v1.RuntimeService`, gRPC on the runtime's unix socket:
containerd's /run/containerd/containerd.sock, CRI-O's /var/run/crio/crio.sock)
is asked `ListPodSandbox`, then `PodSandboxStatus` with `verbose` for each
ready sandbox. The netns path comes from the sandbox's OCI runtime spec in the
verbose info (`runtimeSpec.linux.namespaces`, type network), as the runtime
made it, with `/proc/<pid>/ns/net` of the sandbox process as the fallback; the
pod's cgroup from that process's /proc/<pid>/cgroup (discover.py reads it).

The messages are the few CRI needs, with the field numbers of the CRI's
api.proto; they are built here as protobuf descriptors (no generated module:
a field this module does not name is skipped on the wire, as protobuf does
with any unknown field). Enums travel as their numbers.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from shoal import log
from shoal.cri_messages import BOOL, INT32, INT64, MAP, MESSAGE, STRING, UINT32, build

from node_agent.errors import NodeAgentError

logger = log.get("node_agent.cri")

SERVICE = "/runtime.v1.RuntimeService/"
SANDBOX_READY = 0
DEFAULT_SOCKETS = (Path("/run/containerd/containerd.sock"), Path("/var/run/crio/crio.sock"))

# name -> [(field, number, type, message type or "", repeated?)]
MESSAGES = {
    "PodSandboxMetadata": [("name", 1, STRING, "", False), ("uid", 2, STRING, "", False),
                           ("namespace", 3, STRING, "", False), ("attempt", 4, UINT32, "", False)],
    "LinuxPodSandboxConfig": [("cgroup_parent", 1, STRING, "", False)],
    "PodSandboxConfig": [("metadata", 1, MESSAGE, "PodSandboxMetadata", False), ("hostname", 2, STRING, "", False),
                         ("log_directory", 3, STRING, "", False),
                         ("linux", 8, MESSAGE, "LinuxPodSandboxConfig", False)],
    "RunPodSandboxRequest": [("config", 1, MESSAGE, "PodSandboxConfig", False),
                             ("runtime_handler", 2, STRING, "", False)],
    "RunPodSandboxResponse": [("pod_sandbox_id", 1, STRING, "", False)],
    "PodSandboxIdRequest": [("pod_sandbox_id", 1, STRING, "", False)],  # Stop and Remove
    "Empty": [],
    "PodSandboxStateValue": [("state", 1, INT32, "", False)],
    "PodSandboxFilter": [("id", 1, STRING, "", False), ("state", 2, MESSAGE, "PodSandboxStateValue", False)],
    "ListPodSandboxRequest": [("filter", 1, MESSAGE, "PodSandboxFilter", False)],
    "PodSandbox": [("id", 1, STRING, "", False), ("metadata", 2, MESSAGE, "PodSandboxMetadata", False),
                   ("state", 3, INT32, "", False), ("created_at", 4, INT64, "", False)],
    "ListPodSandboxResponse": [("items", 1, MESSAGE, "PodSandbox", True)],
    "PodSandboxStatusRequest": [("pod_sandbox_id", 1, STRING, "", False), ("verbose", 2, BOOL, "", False)],
    "PodIP": [("ip", 1, STRING, "", False)],
    "PodSandboxNetworkStatus": [("ip", 1, STRING, "", False), ("additional_ips", 2, MESSAGE, "PodIP", True)],
    "PodSandboxStatus": [("id", 1, STRING, "", False), ("metadata", 2, MESSAGE, "PodSandboxMetadata", False),
                         ("state", 3, INT32, "", False), ("created_at", 4, INT64, "", False),
                         ("network", 5, MESSAGE, "PodSandboxNetworkStatus", False)],
    "PodSandboxStatusResponse": [("status", 1, MESSAGE, "PodSandboxStatus", False),
                                 ("info", 2, MESSAGE, MAP, False)],
}


M = build("shoal_cri_subset.proto", MESSAGES)


class CriError(NodeAgentError):
    """The container runtime's CRI socket could not be asked."""


@dataclass(frozen=True)
class CriSandbox:
    id: str
    namespace: str
    name: str
    uid: str
    ready: bool
    ip: str | None
    netns: str | None
    pid: int | None
    ips: tuple[str, ...] = ()  # every address, the primary (`ip`) first, then PodSandboxNetworkStatus.additional_ips


def netns_from_info(info: dict) -> tuple[str | None, int | None]:
    """(netns path, sandbox pid) from a verbose PodSandboxStatus's "info" JSON (containerd's and CRI-O's)."""
    pid = info.get("pid") if isinstance(info.get("pid"), int) and info.get("pid") > 0 else None
    spec = info.get("runtimeSpec") or {}
    for namespace in ((spec.get("linux") or {}).get("namespaces") or []):
        if namespace.get("type") == "network" and namespace.get("path"):
            return namespace["path"], pid
    return (f"/proc/{pid}/ns/net" if pid else None), pid


class CriClient:
    def __init__(self, socket: Path, timeout: float = 10.0) -> None:
        import grpc
        self.socket = Path(socket)
        self.timeout = timeout
        self._grpc = grpc
        self.channel = grpc.insecure_channel(f"unix://{self.socket}")

    def call(self, method: str, request, response: str):
        """One unary CRI call; `response` names the reply's message."""
        stub = self.channel.unary_unary(SERVICE + method, request_serializer=lambda m: m.SerializeToString(),
                                        response_deserializer=M[response].FromString)
        try:
            return stub(request, timeout=self.timeout)
        except self._grpc.RpcError as e:
            raise CriError(f"CRI {method} on {self.socket} failed: {e.code().name}: {e.details()}; check that the "
                           f"container runtime runs and that the node agent mounts its socket") from None

    def sandboxes(self) -> list[CriSandbox]:
        """Every ready pod sandbox, with its netns and sandbox pid (from its verbose status)."""
        ready = M["ListPodSandboxRequest"](filter=M["PodSandboxFilter"](
            state=M["PodSandboxStateValue"](state=SANDBOX_READY)))
        out = []
        for item in self.call("ListPodSandbox", ready, "ListPodSandboxResponse").items:
            status = self.call("PodSandboxStatus", M["PodSandboxStatusRequest"](pod_sandbox_id=item.id, verbose=True),
                               "PodSandboxStatusResponse")
            try:
                info = json.loads(status.info.get("info", "{}"))
            except ValueError:
                info = {}
            netns, pid = netns_from_info(info)
            meta, network = status.status.metadata, status.status.network
            ips = tuple(dict.fromkeys(ip for ip in (network.ip, *(extra.ip for extra in network.additional_ips)) if ip))
            out.append(CriSandbox(item.id, meta.namespace, meta.name, meta.uid, status.status.state == SANDBOX_READY,
                                  network.ip or None, netns, pid, ips))
        return out

    def close(self) -> None:
        self.channel.close()


def runtime_socket(candidates=DEFAULT_SOCKETS) -> Path | None:
    """The first CRI socket that exists on this node."""
    for path in candidates:
        if os.path.exists(path):
            return Path(path)
    return None


class RuntimeSandboxes:
    """`lookup(uid)` -> (netns, pid) of the pod's ready sandbox, from the runtime's CRI socket.

    The listing is kept and asked again only when a uid is not in it, at most once per
    `refresh_seconds` (a pod the runtime does not know is then looked for in /proc). A runtime
    that cannot be asked is logged once, and the agent falls back to /proc."""

    def __init__(self, socket: Path, clock, refresh_seconds: float = 2.0) -> None:
        self.client = CriClient(socket, timeout=5.0)
        self.clock = clock
        self.refresh_seconds = refresh_seconds
        self.by_uid: dict[str, CriSandbox] = {}
        self.listed_at: float | None = None
        self.failing = False

    def lookup(self, uid: str) -> tuple[str, int | None] | None:
        if uid not in self.by_uid and (self.listed_at is None or
                                       self.clock() - self.listed_at >= self.refresh_seconds):
            self.listed_at = self.clock()
            try:
                self.by_uid = {s.uid: s for s in self.client.sandboxes() if s.ready and s.netns}
                self.failing = False
            except CriError as e:
                if not self.failing:
                    logger.warning("the container runtime cannot be asked for pod sandboxes; looking in /proc",
                                   error=str(e))
                self.failing = True
        found = self.by_uid.get(uid)
        if found is None or not os.path.exists(found.netns):
            return None
        return found.netns, found.pid
