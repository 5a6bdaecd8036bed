"""The local kubelet's CRI client: pod sandboxes, containers, exec and images, over a node's containerd socket.

The CRI is gRPC on the runtime's unix socket (`runtime.v1.RuntimeService` and
`runtime.v1.ImageService`). As in node_agent/cri.py, the messages are built
by shoal/cri_messages.py as protobuf descriptors from the field numbers of the CRI's api.proto, only those
this client uses (no generated module; a field not named here is skipped on the
wire, as protobuf does with any unknown field). Enums travel as their numbers.

Calls block; the kubelet makes them from a thread (asyncio.to_thread).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from shoal.cri_messages import BOOL, BYTES, INT32, INT64, MAP, MESSAGE, STRING, UINT32, UINT64, build
from shoal.cri_messages import field as _f
from shoal.local.errors import LocalClusterError

RUNTIME = "/runtime.v1.RuntimeService/"
IMAGES = "/runtime.v1.ImageService/"
SANDBOX_READY = 0
CONTAINER_CREATED, CONTAINER_RUNNING, CONTAINER_EXITED, CONTAINER_UNKNOWN = 0, 1, 2, 3
NAMESPACE_NODE = 2  # NamespaceMode NODE: the node's namespace (hostNetwork, hostPID)
# MountPropagation, by the names a pod's volumeMounts use (None: PROPAGATION_PRIVATE)
PROPAGATION = {None: 0, "None": 0, "HostToContainer": 1, "Bidirectional": 2}

# name -> fields (name, number, type, message type or "", repeated?)
MESSAGES = {
    "PodSandboxMetadata": [_f("name", 1, STRING), _f("uid", 2, STRING), _f("namespace", 3, STRING),
                           _f("attempt", 4, UINT32)],
    "DNSConfig": [_f("servers", 1, STRING, repeated=True), _f("searches", 2, STRING, repeated=True),
                  _f("options", 3, STRING, repeated=True)],
    "NamespaceOption": [_f("network", 1, INT32), _f("pid", 2, INT32), _f("ipc", 3, INT32)],
    "Int64Value": [_f("value", 1, INT64)],
    "LinuxSandboxSecurityContext": [_f("namespace_options", 1, MESSAGE, "NamespaceOption"),
                                    _f("privileged", 6, BOOL)],
    "LinuxPodSandboxConfig": [_f("cgroup_parent", 1, STRING),
                              _f("security_context", 2, MESSAGE, "LinuxSandboxSecurityContext"),
                              _f("sysctls", 3, MESSAGE, MAP)],
    "PodSandboxConfig": [_f("metadata", 1, MESSAGE, "PodSandboxMetadata"), _f("hostname", 2, STRING),
                         _f("log_directory", 3, STRING), _f("dns_config", 4, MESSAGE, "DNSConfig"),
                         _f("labels", 6, MESSAGE, MAP), _f("annotations", 7, MESSAGE, MAP),
                         _f("linux", 8, MESSAGE, "LinuxPodSandboxConfig")],
    "RunPodSandboxRequest": [_f("config", 1, MESSAGE, "PodSandboxConfig"), _f("runtime_handler", 2, STRING)],
    "RunPodSandboxResponse": [_f("pod_sandbox_id", 1, STRING)],
    "PodSandboxIdRequest": [_f("pod_sandbox_id", 1, STRING)],  # Stop and Remove
    "Empty": [],
    "PodSandboxStatusRequest": [_f("pod_sandbox_id", 1, STRING), _f("verbose", 2, BOOL)],
    "PodIP": [_f("ip", 1, STRING)],
    "PodSandboxNetworkStatus": [_f("ip", 1, STRING), _f("additional_ips", 2, MESSAGE, "PodIP", True)],
    "PodSandboxStatus": [_f("id", 1, STRING), _f("metadata", 2, MESSAGE, "PodSandboxMetadata"),
                         _f("state", 3, INT32), _f("network", 5, MESSAGE, "PodSandboxNetworkStatus")],
    "PodSandboxStatusResponse": [_f("status", 1, MESSAGE, "PodSandboxStatus"), _f("info", 2, MESSAGE, MAP)],
    "PodSandboxFilter": [_f("id", 1, STRING)],
    "ListPodSandboxRequest": [_f("filter", 1, MESSAGE, "PodSandboxFilter")],
    "PodSandbox": [_f("id", 1, STRING), _f("metadata", 2, MESSAGE, "PodSandboxMetadata"), _f("state", 3, INT32)],
    "ListPodSandboxResponse": [_f("items", 1, MESSAGE, "PodSandbox", True)],
    "ContainerMetadata": [_f("name", 1, STRING), _f("attempt", 2, UINT32)],
    "ImageSpec": [_f("image", 1, STRING)],
    "KeyValue": [_f("key", 1, STRING), _f("value", 2, STRING)],
    "Mount": [_f("container_path", 1, STRING), _f("host_path", 2, STRING), _f("readonly", 3, BOOL),
              _f("propagation", 5, INT32)],
    "Capability": [_f("add_capabilities", 1, STRING, repeated=True),
                   _f("drop_capabilities", 2, STRING, repeated=True)],
    "LinuxContainerSecurityContext": [_f("capabilities", 1, MESSAGE, "Capability"), _f("privileged", 2, BOOL),
                                      _f("namespace_options", 3, MESSAGE, "NamespaceOption"),
                                      _f("run_as_user", 5, MESSAGE, "Int64Value")],
    "LinuxContainerConfig": [_f("security_context", 2, MESSAGE, "LinuxContainerSecurityContext")],
    "ContainerConfig": [_f("metadata", 1, MESSAGE, "ContainerMetadata"), _f("image", 2, MESSAGE, "ImageSpec"),
                        _f("command", 3, STRING, repeated=True), _f("args", 4, STRING, repeated=True),
                        _f("working_dir", 5, STRING), _f("envs", 6, MESSAGE, "KeyValue", True),
                        _f("mounts", 7, MESSAGE, "Mount", True), _f("labels", 9, MESSAGE, MAP),
                        _f("log_path", 11, STRING), _f("linux", 15, MESSAGE, "LinuxContainerConfig")],
    "CreateContainerRequest": [_f("pod_sandbox_id", 1, STRING), _f("config", 2, MESSAGE, "ContainerConfig"),
                               _f("sandbox_config", 3, MESSAGE, "PodSandboxConfig")],
    "CreateContainerResponse": [_f("container_id", 1, STRING)],
    "ContainerIdRequest": [_f("container_id", 1, STRING)],  # Start and Remove
    "StopContainerRequest": [_f("container_id", 1, STRING), _f("timeout", 2, INT64)],
    "ContainerStatusRequest": [_f("container_id", 1, STRING), _f("verbose", 2, BOOL)],
    "ContainerStatus": [_f("id", 1, STRING), _f("metadata", 2, MESSAGE, "ContainerMetadata"),
                        _f("state", 3, INT32), _f("created_at", 4, INT64), _f("started_at", 5, INT64),
                        _f("finished_at", 6, INT64), _f("exit_code", 7, INT32), _f("reason", 10, STRING),
                        _f("message", 11, STRING), _f("log_path", 15, STRING)],
    "ContainerStatusResponse": [_f("status", 1, MESSAGE, "ContainerStatus"), _f("info", 2, MESSAGE, MAP)],
    "ExecSyncRequest": [_f("container_id", 1, STRING), _f("cmd", 2, STRING, repeated=True), _f("timeout", 3, INT64)],
    "ExecSyncResponse": [_f("stdout", 1, BYTES), _f("stderr", 2, BYTES), _f("exit_code", 3, INT32)],
    "ImageFilter": [_f("image", 1, MESSAGE, "ImageSpec")],
    "ListImagesRequest": [_f("filter", 1, MESSAGE, "ImageFilter")],
    "Image": [_f("id", 1, STRING), _f("repo_tags", 2, STRING, repeated=True), _f("size", 4, UINT64)],
    "ListImagesResponse": [_f("images", 1, MESSAGE, "Image", True)],
}


M = build("shoal_local_cri.proto", MESSAGES)


class CriError(LocalClusterError):
    """A CRI call to a node's containerd failed; the message carries containerd's own words."""


@dataclass(frozen=True)
class SandboxInfo:
    id: str
    ready: bool
    ip: str
    netns: str | None  # the netns the runtime made, from the sandbox's OCI spec
    pid: int | None


@dataclass(frozen=True)
class ContainerInfo:
    id: str
    state: int
    exit_code: int
    reason: str
    message: str
    pid: int | None


@dataclass(frozen=True)
class ContainerSpec:
    """What CreateContainer needs of one container of a pod (the kubelet fills it from the manifest)."""
    name: str
    attempt: int
    image: str
    command: tuple[str, ...]
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    mounts: tuple[tuple, ...]  # (host path, container path, read-only[, MountPropagation number])
    log_path: str  # relative to the sandbox's log directory
    working_dir: str = ""
    privileged: bool = False
    host_network: bool = False
    host_pid: bool = False
    run_as_user: int | None = None
    add_capabilities: tuple[str, ...] = ()   # as a pod's securityContext names them: NET_ADMIN, or ALL
    drop_capabilities: tuple[str, ...] = ()


def _verbose_info(reply) -> tuple[dict, int | None]:
    """(the runtime's verbose "info" JSON, the process's pid) of a status reply asked with verbose."""
    try:
        info = json.loads(reply.info.get("info", "{}"))
    except ValueError:
        info = {}
    pid = info.get("pid") if isinstance(info.get("pid"), int) and info["pid"] > 0 else None
    return info, pid


class Cri:
    def __init__(self, socket: Path, timeout: float = 60.0) -> None:
        import grpc
        self.socket = Path(socket)
        self.timeout = timeout
        self._grpc = grpc
        self.channel = grpc.insecure_channel(f"unix://{self.socket}")

    def call(self, method: str, request, response: str, timeout: float | None = None):
        stub = self.channel.unary_unary(method, request_serializer=lambda m: m.SerializeToString(),
                                        response_deserializer=M[response].FromString)
        try:
            return stub(request, timeout=timeout or self.timeout)
        except self._grpc.RpcError as e:
            name = method.rsplit("/", 1)[-1]
            raise CriError(f"{name}: {e.details() or e.code().name}") from None

    # -- sandboxes ---------------------------------------------------------------------------

    @staticmethod
    def sandbox_config(namespace: str, name: str, uid: str, *, log_directory: str, cgroup_parent: str,
                       dns_searches: tuple[str, ...] = (), host_network: bool = False, host_pid: bool = False,
                       privileged: bool = False) -> object:
        security = M["LinuxSandboxSecurityContext"](namespace_options=M["NamespaceOption"](
            network=NAMESPACE_NODE if host_network else 0, pid=NAMESPACE_NODE if host_pid else 0),
            privileged=privileged)  # a privileged container needs a privileged sandbox
        return M["PodSandboxConfig"](
            metadata=M["PodSandboxMetadata"](name=name, uid=uid, namespace=namespace, attempt=0),
            hostname="" if host_network else name,  # a hostNetwork pod shares the node's UTS namespace too
            log_directory=log_directory,
            dns_config=M["DNSConfig"](servers=["127.0.0.1"], searches=list(dns_searches), options=["ndots:5"]),
            labels={"io.kubernetes.pod.namespace": namespace, "io.kubernetes.pod.name": name,
                    "io.kubernetes.pod.uid": uid},
            linux=M["LinuxPodSandboxConfig"](cgroup_parent=cgroup_parent, security_context=security))

    def run_sandbox(self, config) -> str:
        return self.call(RUNTIME + "RunPodSandbox", M["RunPodSandboxRequest"](config=config),
                         "RunPodSandboxResponse", timeout=max(self.timeout, 180)).pod_sandbox_id

    def sandbox(self, sandbox_id: str) -> SandboxInfo:
        reply = self.call(RUNTIME + "PodSandboxStatus",
                          M["PodSandboxStatusRequest"](pod_sandbox_id=sandbox_id, verbose=True),
                          "PodSandboxStatusResponse")
        info, pid = _verbose_info(reply)
        netns = None
        for namespace in (((info.get("runtimeSpec") or {}).get("linux") or {}).get("namespaces") or []):
            if namespace.get("type") == "network" and namespace.get("path"):
                netns = namespace["path"]
        return SandboxInfo(sandbox_id, reply.status.state == SANDBOX_READY, reply.status.network.ip, netns, pid)

    def sandboxes(self) -> list[tuple[str, str, str]]:
        """(id, namespace, name) of every sandbox the runtime has, ready or not."""
        items = self.call(RUNTIME + "ListPodSandbox", M["ListPodSandboxRequest"](), "ListPodSandboxResponse").items
        return [(s.id, s.metadata.namespace, s.metadata.name) for s in items]

    def remove_sandbox(self, sandbox_id: str) -> None:
        """Stops (its containers, then its network: CNI DEL) and removes the sandbox."""
        request = M["PodSandboxIdRequest"](pod_sandbox_id=sandbox_id)
        self.call(RUNTIME + "StopPodSandbox", request, "Empty", timeout=max(self.timeout, 120))
        self.call(RUNTIME + "RemovePodSandbox", request, "Empty", timeout=max(self.timeout, 120))

    # -- containers ----------------------------------------------------------------------------

    def create_container(self, sandbox_id: str, sandbox_config, spec: ContainerSpec) -> str:
        security = M["LinuxContainerSecurityContext"](privileged=spec.privileged)
        if spec.host_network:
            security.namespace_options.network = NAMESPACE_NODE
        if spec.host_pid:
            security.namespace_options.pid = NAMESPACE_NODE
        if spec.run_as_user is not None:
            security.run_as_user.value = spec.run_as_user
        if spec.add_capabilities or spec.drop_capabilities:
            security.capabilities.add_capabilities.extend(spec.add_capabilities)
            security.capabilities.drop_capabilities.extend(spec.drop_capabilities)
        config = M["ContainerConfig"](
            metadata=M["ContainerMetadata"](name=spec.name, attempt=spec.attempt),
            image=M["ImageSpec"](image=spec.image), command=list(spec.command), args=list(spec.args),
            working_dir=spec.working_dir, envs=[M["KeyValue"](key=k, value=v) for k, v in spec.env],
            mounts=[M["Mount"](host_path=m[0], container_path=m[1], readonly=m[2],
                               propagation=m[3] if len(m) > 3 else 0) for m in spec.mounts],
            log_path=spec.log_path, linux=M["LinuxContainerConfig"](security_context=security))
        request = M["CreateContainerRequest"](pod_sandbox_id=sandbox_id, config=config, sandbox_config=sandbox_config)
        return self.call(RUNTIME + "CreateContainer", request, "CreateContainerResponse",
                         timeout=max(self.timeout, 180)).container_id

    def start_container(self, container_id: str) -> None:
        self.call(RUNTIME + "StartContainer", M["ContainerIdRequest"](container_id=container_id), "Empty")

    def stop_container(self, container_id: str, grace: float) -> None:
        self.call(RUNTIME + "StopContainer", M["StopContainerRequest"](container_id=container_id, timeout=int(grace)),
                  "Empty", timeout=grace + 60)

    def remove_container(self, container_id: str) -> None:
        self.call(RUNTIME + "RemoveContainer", M["ContainerIdRequest"](container_id=container_id), "Empty")

    def container(self, container_id: str) -> ContainerInfo:
        reply = self.call(RUNTIME + "ContainerStatus",
                          M["ContainerStatusRequest"](container_id=container_id, verbose=True),
                          "ContainerStatusResponse")
        _, pid = _verbose_info(reply)
        s = reply.status
        return ContainerInfo(container_id, s.state, s.exit_code, s.reason, s.message, pid)

    def exec_sync(self, container_id: str, argv: list[str], timeout: float) -> tuple[bytes, bytes, int]:
        reply = self.call(RUNTIME + "ExecSync", M["ExecSyncRequest"](container_id=container_id, cmd=argv,
                                                                      timeout=int(timeout)),
                          "ExecSyncResponse", timeout=timeout + 30)
        return reply.stdout, reply.stderr, reply.exit_code

    # -- images -------------------------------------------------------------------------------

    def images(self) -> list[tuple[str, int]]:
        """(reference, size in bytes) of every tagged image the runtime has."""
        reply = self.call(IMAGES + "ListImages", M["ListImagesRequest"](), "ListImagesResponse")
        return sorted((tag, image.size) for image in reply.images for tag in image.repo_tags)

    def close(self) -> None:
        self.channel.close()
