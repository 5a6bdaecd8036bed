"""The node agent's DaemonSet mounts the node's CRI socket where node_agent/cri.py looks for it, read-only."""

from __future__ import annotations

from pathlib import Path

from node_agent.cri import DEFAULT_SOCKETS
from shoal.install.kustomize import render_objects

DAEMONSET = Path(__file__).resolve().parents[2] / "daemonset"


def node_agent() -> tuple[dict, dict]:
    (pod,) = [o["spec"]["template"]["spec"] for o in render_objects(DAEMONSET)
              if o["kind"] == "DaemonSet" and o["metadata"]["name"] == "shoal-node-agent"]
    (container,) = [c for c in pod["containers"] if c["name"] == "node-agent"]
    return pod, container


def test_each_runtime_socket_the_agent_asks_is_mounted_read_only_from_the_same_host_directory():
    pod, container = node_agent()
    volumes = {v["name"]: v for v in pod["volumes"]}
    for socket in DEFAULT_SOCKETS:
        mounts = [m for m in container["volumeMounts"] if m["mountPath"] == str(socket.parent)]
        assert len(mounts) == 1, f"nothing mounted at {socket.parent}, where the agent looks for {socket.name}"
        assert mounts[0].get("readOnly") is True, f"{socket.parent} is mounted writable"
        assert volumes[mounts[0]["name"]]["hostPath"]["path"] == str(socket.parent)
