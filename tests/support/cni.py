"""A CNI runtime for tests: runs a conflist's plugin chain the way containerd and CRI-O do (libcni).

ADD runs each plugin in order, giving each the previous one's result as
`prevResult`; when one fails, the runtime runs DEL over the whole chain (as a
runtime does for a sandbox whose network setup failed) and reports the
failure. DEL runs the chain in reverse with the cached ADD result; CHECK in
order with it. Every plugin is an executable found on CNI_PATH, run in the
node's netns (`ip netns exec`), with the CNI_* environment and its config on stdin.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

SYSTEM_PLUGINS = Path("/usr/lib/cni")  # Debian's containernetworking-plugins


class CniFailed(AssertionError):
    def __init__(self, plugin: str, command: str, error: dict, stderr: str) -> None:
        self.plugin, self.command, self.error = plugin, command, error
        super().__init__(f"{plugin} {command} failed: {error} {stderr}".strip())

    @property
    def msg(self) -> str:
        return str(self.error.get("msg", ""))


@dataclass(frozen=True)
class Sandbox:
    container_id: str
    netns: str  # path
    namespace: str
    name: str
    uid: str
    ifname: str = "eth0"

    def cni_args(self) -> str:
        return (f"IgnoreUnknown=1;K8S_POD_NAMESPACE={self.namespace};K8S_POD_NAME={self.name};"
                f"K8S_POD_INFRA_CONTAINER_ID={self.container_id};K8S_POD_UID={self.uid}")


@dataclass
class Runtime:
    node_netns: str  # name under /run/netns where the plugins run
    conflist: Path
    bin_dirs: tuple[Path, ...]
    results: dict[str, dict] = field(default_factory=dict)  # container id -> cached ADD result

    def _conf(self) -> dict:
        return json.loads(self.conflist.read_text())

    def _invoke(self, plugin: dict, command: str, sandbox: Sandbox, conf: dict, prev: dict | None,
                timeout: float) -> dict | None:
        config = {**plugin, "cniVersion": conf["cniVersion"], "name": conf["name"]}
        if prev is not None:
            config["prevResult"] = prev
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "CNI_COMMAND": command, "CNI_CONTAINERID": sandbox.container_id, "CNI_NETNS": sandbox.netns,
               "CNI_IFNAME": sandbox.ifname, "CNI_ARGS": sandbox.cni_args(),
               "CNI_PATH": ":".join(map(str, self.bin_dirs))}
        binary = next((d / plugin["type"] for d in self.bin_dirs if (d / plugin["type"]).exists()), None)
        if binary is None:
            raise CniFailed(plugin["type"], command, {"msg": f"no {plugin['type']} on {self.bin_dirs}"}, "")
        done = subprocess.run(["ip", "netns", "exec", self.node_netns, str(binary)], input=json.dumps(config),
                              env=env, capture_output=True, text=True, timeout=timeout)
        out = json.loads(done.stdout) if done.stdout.strip() else None
        if done.returncode != 0:
            raise CniFailed(plugin["type"], command, out or {}, done.stderr)
        return out

    def add(self, sandbox: Sandbox, timeout: float = 300) -> dict:
        conf = self._conf()
        result = None
        try:
            for plugin in conf["plugins"]:
                result = self._invoke(plugin, "ADD", sandbox, conf, result, timeout)
        except CniFailed:
            self.delete(sandbox, timeout=timeout, cached=result)
            raise
        self.results[sandbox.container_id] = result
        return result

    def check(self, sandbox: Sandbox, timeout: float = 300) -> None:
        conf = self._conf()
        for plugin in conf["plugins"]:
            self._invoke(plugin, "CHECK", sandbox, conf, self.results[sandbox.container_id], timeout)

    def delete(self, sandbox: Sandbox, timeout: float = 300, cached: dict | None = None) -> None:
        conf = self._conf()
        prev = self.results.pop(sandbox.container_id, cached)
        for plugin in reversed(conf["plugins"]):
            self._invoke(plugin, "DEL", sandbox, conf, prev, timeout)
