#!/usr/bin/env python3
"""shoal-cni: the chained CNI plugin (CNI spec 1.0) that hands each new pod sandbox to the node agent.

The node agent copies this file into the node's CNI bin directory as `shoal-cni`
and chains `{"type": "shoal-cni", ...}` after the cluster's own plugins
(node_agent/cni_install.py). It runs on the node, not in the agent's image, so
it needs only a Python 3.7 or newer at /usr/bin/env python3 and its standard
library: nothing of shoal is imported.

A runtime calls it with CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME,
CNI_ARGS, CNI_PATH in the environment and the network configuration (with the
previous plugin's result as `prevResult`) on stdin.

- ADD: asks the agent, over the node-local unix socket named in the config
  (`socket`), to enroll the pod: its namespace, name and uid (K8S_POD_* from
  CNI_ARGS), netns path and addresses. The agent answers once capture is in
  place and the ztunnel has the pod, or says the pod is not enrolled. Then the
  plugin prints `prevResult` unchanged. When the agent cannot be reached, the
  enrollment file it keeps (`enrollment_file`) tells whether the pod would be
  enrolled: if so, ADD fails naming the cause, so the pod does not start
  uncaptured (the kubelet retries); if not, ADD passes at once.
- DEL: asks the agent to remove the pod's capture and tell the ztunnel. DEL
  never fails for an agent that is not there: the netns goes with the sandbox,
  and a restarted agent reconciles.
- CHECK: asks the agent whether the pod's capture is in place; fails if the
  agent says it is missing, or cannot be reached for a pod that would be enrolled.
- VERSION: the versions it speaks.

The wire to the agent: one JSON object per line each way, over SOCK_STREAM:
request {"command", "container_id", "netns", "ifname", "namespace", "name",
"uid", "ips"}; reply {"ok": bool, "enrolled": bool, "error": str}.
"""

import json
import os
import socket
import sys

SUPPORTED_VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]
DEFAULT_SOCKET = "/var/run/shoal/cni.sock"
DEFAULT_TIMEOUT_SECONDS = 120.0

# Error codes: 1-99 are the spec's; 100 and up are the plugin's own.
ERR_INCOMPATIBLE_VERSION = 1
ERR_DECODING = 6
ERR_INVALID_ENV = 4
ERR_AGENT_UNREACHABLE = 100
ERR_AGENT_REFUSED = 101


class PluginError(Exception):
    def __init__(self, code, msg, details=""):
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


def parse_cni_args(text):
    """K=V;K=V (CNI_ARGS) as a dict."""
    out = {}
    for part in (text or "").split(";"):
        if "=" in part:
            key, value = part.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def addresses(prev_result):
    """The pod's addresses from the previous plugin's result (1.0 `ips`, or 0.2 `ip4`/`ip6`), without prefixes."""
    found = []
    for entry in (prev_result or {}).get("ips") or []:
        address = str(entry.get("address", "")).split("/")[0]
        if address:
            found.append(address)
    for legacy in ("ip4", "ip6"):
        address = str(((prev_result or {}).get(legacy) or {}).get("ip", "")).split("/")[0]
        if address:
            found.append(address)
    return found


def request_for(command, env, config):
    args = parse_cni_args(env.get("CNI_ARGS", ""))
    return {
        "command": command,
        "container_id": env.get("CNI_CONTAINERID", ""),
        "netns": env.get("CNI_NETNS", ""),
        "ifname": env.get("CNI_IFNAME", ""),
        "namespace": args.get("K8S_POD_NAMESPACE", ""),
        "name": args.get("K8S_POD_NAME", ""),
        "uid": args.get("K8S_POD_UID", ""),
        "ips": addresses(config.get("prevResult")),
    }


def ask_agent(path, request, timeout):
    """The agent's reply to one request; raises OSError when it cannot be reached or hangs up."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(json.dumps(request).encode() + b"\n")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("the node agent closed the connection without answering")
            reply += chunk
    return json.loads(reply)


def would_enroll(enrollment_file, namespace, name):
    """From the agent's enrollment file: True, False, or None when there is no file to ask."""
    try:
        with open(enrollment_file) as f:
            known = json.load(f)
    except (OSError, ValueError):
        return None
    pods = known.get("pods") or {}
    key = "%s/%s" % (namespace, name)
    if key in pods:
        return bool(pods[key])
    return namespace in (known.get("namespaces") or [])


def run(command, env, config):
    """The result to print for this call (None for DEL); raises PluginError."""
    socket_path = config.get("socket") or DEFAULT_SOCKET
    timeout = float(config.get("timeout_seconds") or DEFAULT_TIMEOUT_SECONDS)
    request = request_for(command, env, config)
    passed = config.get("prevResult") or {"cniVersion": config.get("cniVersion", "1.0.0"), "interfaces": [], "ips": []}
    if not request["namespace"] or not request["name"]:
        return passed if command == "ADD" else None  # not a Kubernetes pod (no K8S_POD_* in CNI_ARGS): not ours
    if command in ("ADD", "CHECK") and not request["netns"]:
        raise PluginError(ERR_INVALID_ENV, "CNI_NETNS is empty", "the runtime must name the sandbox's netns")
    try:
        reply = ask_agent(socket_path, request, timeout)
    except (OSError, ValueError) as e:
        if command == "DEL":
            return None  # the rules go with the netns; a restarted agent reconciles the rest
        enrolled = would_enroll(config.get("enrollment_file", ""), request["namespace"], request["name"])
        if enrolled is False:
            return passed
        pod = "%s/%s" % (request["namespace"], request["name"])
        why = "it would be enrolled in the mesh" if enrolled else "whether it is enrolled is unknown"
        raise PluginError(
            ERR_AGENT_UNREACHABLE,
            "shoal-cni: the shoal node agent is not reachable at %s (%s); pod %s is not started, as %s "
            "and would run uncaptured" % (socket_path, e, pod, why),
            "check that the shoal-node-agent pod of this node runs and is ready; the kubelet retries")
    if not reply.get("ok"):
        raise PluginError(ERR_AGENT_REFUSED, "shoal-cni: the shoal node agent could not %s pod %s/%s: %s" % (
            {"ADD": "capture", "DEL": "release", "CHECK": "confirm the capture of"}[command],
            request["namespace"], request["name"], reply.get("error") or "no reason given"),
            "see the node agent's log and its shoal_node_agent_* metrics")
    return passed if command in ("ADD",) else None


def main(stdin=None, stdout=None, env=None):
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    env = os.environ if env is None else env
    command = env.get("CNI_COMMAND", "")
    version = "1.0.0"
    try:
        if command == "VERSION":
            json.dump({"cniVersion": version, "supportedVersions": SUPPORTED_VERSIONS}, stdout)
            return 0
        try:
            config = json.loads(stdin.read() or "{}")
        except ValueError as e:
            raise PluginError(ERR_DECODING, "shoal-cni: the network configuration on stdin is not JSON: %s" % e)
        version = config.get("cniVersion") or version
        if version not in SUPPORTED_VERSIONS:
            raise PluginError(ERR_INCOMPATIBLE_VERSION, "shoal-cni: CNI version %s is not supported" % version,
                              "supported: %s" % ", ".join(SUPPORTED_VERSIONS))
        if command not in ("ADD", "DEL", "CHECK"):
            raise PluginError(ERR_INVALID_ENV, "shoal-cni: unknown CNI_COMMAND %r" % command,
                              "one of ADD, DEL, CHECK, VERSION")
        result = run(command, env, config)
        if result is not None:
            json.dump(result, stdout)
        return 0
    except PluginError as e:
        json.dump({"cniVersion": version, "code": e.code, "msg": e.msg, "details": e.details}, stdout)
        return 1


if __name__ == "__main__":
    sys.exit(main())
