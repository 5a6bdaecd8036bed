"""The `kubernetes` pin in pyproject.toml admits only clients that have the API shoal.kube_client calls.

`ApiClient.param_serialize` and `call_api(method, url, header_params, body, post_params, _request_timeout)`
first ship in kubernetes 37.0.0 (35.x and 36.x have the older `call_api(resource_path, method, ...)`), so
the pin's lower bound must be 37. The adapters' tests (tests/control_plane/test_kube_*.py,
tests/node_agent/test_kube_source.py, tests/waypoint/test_controller_kube.py, tests/shoal/test_kube_calls.py)
run on the installed client, which must be one the pin allows.
"""

from __future__ import annotations

import inspect
import tomllib
from importlib.metadata import version
from pathlib import Path

from kubernetes.client import ApiClient
from packaging.requirements import Requirement
from packaging.version import Version

FIRST_WITH_PARAM_SERIALIZE = Version("37.0.0")


def kubernetes_requirement() -> Requirement:
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    (line,) = [d for d in pyproject["project"]["dependencies"] if Requirement(d).name == "kubernetes"]
    return Requirement(line)


def test_the_pin_excludes_clients_without_param_serialize():
    requirement = kubernetes_requirement()
    lowest = min((Version(s.version) for s in requirement.specifier if s.operator in (">=", "==", "~=")),
                 default=None)
    assert lowest is not None, f"{requirement}: no lower bound, so pip may pick a client without param_serialize"
    assert lowest >= FIRST_WITH_PARAM_SERIALIZE, f"{requirement} admits {lowest}, which lacks param_serialize"
    assert not requirement.specifier.contains("36.0.0")


def test_the_installed_client_is_allowed_and_has_the_calls_used():
    assert kubernetes_requirement().specifier.contains(version("kubernetes"))
    assert {"method", "resource_path", "query_params", "header_params", "body", "auth_settings"} <= set(
        inspect.signature(ApiClient.param_serialize).parameters)
    assert {"method", "url", "header_params", "body", "post_params", "_request_timeout"} <= set(
        inspect.signature(ApiClient.call_api).parameters)
