"""The shoal-cni executable on its own: run as a runtime runs it, with no node agent behind its socket.

What it does with an agent that answers is in test_chain.py (real agent, real chain).
Here: VERSION; bad input; and, with the agent unreachable, the choice between failing
(a pod that would be enrolled, or one it cannot tell) and passing at once (one that
would not be), from the enrollment file the agent keeps.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from node_agent import cni_plugin
from node_agent.cni_install import PLUGIN_SOURCE

PREV = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/run/netns/x"}],
        "ips": [{"address": "198.19.7.5/24", "gateway": "198.19.7.1", "interface": 0},
                {"address": "fd73:686f:616c:7::5/64", "interface": 0}]}


def call(command, tmp_path, *, namespace="demo", name="web-1", config=None, enrollment=None, netns="/run/netns/x"):
    if enrollment is not None:
        (tmp_path / "enrollment.json").write_text(json.dumps(enrollment))
    conf = {"cniVersion": "1.0.0", "name": "k8s", "type": "shoal-cni", "socket": str(tmp_path / "absent.sock"),
            "enrollment_file": str(tmp_path / "enrollment.json"), "prevResult": PREV}
    conf.update(config or {})
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_NETNS": netns, "CNI_IFNAME": "eth0",
           "CNI_PATH": "/usr/lib/cni",
           "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};K8S_POD_UID=u-1"}
    # The file the agent installs, run by the interpreter its shebang names.
    done = subprocess.run([sys.executable, str(PLUGIN_SOURCE)], input=json.dumps(conf), env=env,
                          capture_output=True, text=True, timeout=60)
    return done.returncode, (json.loads(done.stdout) if done.stdout.strip() else None)


def test_version_lists_the_spec_versions_it_speaks(tmp_path):
    code, out = call("VERSION", tmp_path)
    assert code == 0
    assert out["cniVersion"] == "1.0.0" and "1.0.0" in out["supportedVersions"]


def test_the_plugin_file_starts_with_a_shebang_and_imports_nothing_of_shoal():
    text = PLUGIN_SOURCE.read_text()
    assert text.startswith("#!/usr/bin/env python3\n")
    assert "import shoal" not in text and "from shoal" not in text and "from node_agent" not in text


def test_an_unreachable_agent_fails_add_of_a_pod_that_would_be_enrolled_naming_the_cause(tmp_path):
    code, out = call("ADD", tmp_path, enrollment={"namespaces": ["demo"], "pods": {}})
    assert code == 1
    assert out["code"] == cni_plugin.ERR_AGENT_UNREACHABLE
    assert "node agent is not reachable at" in out["msg"] and "absent.sock" in out["msg"]
    assert "demo/web-1" in out["msg"] and "would be enrolled" in out["msg"]
    assert "shoal-node-agent" in out["details"]


def test_an_unreachable_agent_fails_add_when_it_cannot_tell(tmp_path):
    code, out = call("ADD", tmp_path)  # no enrollment file
    assert code == 1 and "whether it is enrolled is unknown" in out["msg"]


def test_an_unreachable_agent_passes_a_pod_that_would_not_be_enrolled_with_prev_result_unchanged(tmp_path):
    code, out = call("ADD", tmp_path, namespace="plain", enrollment={"namespaces": ["demo"], "pods": {}})
    assert (code, out) == (0, PREV)


@pytest.mark.parametrize("pods, namespace, code", [
    ({"demo/web-1": False}, "demo", 0),  # opted out in an enrolled namespace
    ({"plain/web-1": True}, "plain", 1),  # opted in in a namespace that is not
])
def test_the_pods_own_say_in_the_enrollment_file_wins(tmp_path, pods, namespace, code):
    assert call("ADD", tmp_path, namespace=namespace, enrollment={"namespaces": ["demo"], "pods": pods})[0] == code


def test_del_with_no_agent_succeeds_and_check_fails_for_an_enrolled_pod(tmp_path):
    enrollment = {"namespaces": ["demo"], "pods": {}}
    assert call("DEL", tmp_path, enrollment=enrollment) == (0, None)
    code, out = call("CHECK", tmp_path, enrollment=enrollment)
    assert code == 1 and "not reachable" in out["msg"]


def test_a_sandbox_that_is_not_a_kubernetes_pod_is_passed_through(tmp_path):
    code, out = call("ADD", tmp_path, namespace="", name="")
    assert (code, out) == (0, PREV)


@pytest.mark.parametrize("command, config, netns, says", [
    ("ADD", {"cniVersion": "0.1.0"}, "/run/netns/x", "CNI version 0.1.0 is not supported"),
    ("ADD", {}, "", "CNI_NETNS is empty"),
    ("STATUS", {}, "/run/netns/x", "unknown CNI_COMMAND"),
])
def test_bad_input_is_refused_saying_what(tmp_path, command, config, netns, says):
    code, out = call(command, tmp_path, config=config, netns=netns)
    assert code == 1 and says in out["msg"], out


def test_addresses_come_from_a_1_0_result_and_from_a_0_2_one():
    assert cni_plugin.addresses(PREV) == ["198.19.7.5", "fd73:686f:616c:7::5"]
    assert cni_plugin.addresses({"ip4": {"ip": "198.19.7.9/24"}}) == ["198.19.7.9"]
    assert cni_plugin.parse_cni_args("A=1;B=x=y;;junk") == {"A": "1", "B": "x=y"}
