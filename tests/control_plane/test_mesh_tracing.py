"""Mesh-wide tracing (issue 14, item 3): the control plane's --tracing-endpoint/--tracing-sampling reach the
command of every waypoint it deploys, locally and on Kubernetes, and the waypoint takes them."""

from __future__ import annotations

import pytest

from control_plane.app import Settings, SettingsError
from control_plane.waypoints import desired, local_argv
from control_plane.waypoints_kube import kube_desired
from shoal.cli import build_parser

GATEWAY = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
           "metadata": {"name": "waypoint", "namespace": "shop", "uid": "u-1"},
           "spec": {"gatewayClassName": "shoal-waypoint"}}


def command(objects) -> list[str]:
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    return deployment["spec"]["template"]["spec"]["containers"][0]["command"]


def test_the_settings_make_the_waypoints_arguments():
    assert Settings().waypoint_args == ()
    assert Settings(tracing_endpoint="http://collector:4318", tracing_sampling=12.5).waypoint_args == (
        "--tracing-endpoint", "http://collector:4318", "--tracing-sampling", "12.5")


@pytest.mark.parametrize("given, flag", [(dict(tracing_endpoint="collector:4318"), "--tracing-endpoint"),
                                         (dict(tracing_sampling=101), "--tracing-sampling"),
                                         (dict(tracing_sampling=-1), "--tracing-sampling")])
def test_bad_tracing_settings_name_their_flag(given, flag):
    with pytest.raises(SettingsError, match=flag):
        Settings(**given)


def test_a_local_waypoint_is_started_with_them_and_its_cli_takes_them():
    extra = Settings(tracing_endpoint="http://198.18.0.1:4318", tracing_sampling=50).waypoint_args
    argv = command(desired(GATEWAY, local_argv("c1", "198.18.0.1:15012", extra)))
    assert argv[-4:] == ["--tracing-endpoint", "http://198.18.0.1:4318", "--tracing-sampling", "50"]
    args = build_parser().parse_args(argv[argv.index("-m") + 2:])     # what `python -m shoal ...` parses
    assert (args.tracing_endpoint, args.tracing_sampling) == ("http://198.18.0.1:4318", 50.0)


def test_a_kubernetes_waypoint_is_deployed_with_them():
    extra = Settings(tracing_endpoint="http://otel-collector.observability:4318").waypoint_args
    argv = command(kube_desired(GATEWAY, "shoal:test", b"PEM", extra))
    assert argv[0] == "shoal" and argv[-4:] == ["--tracing-endpoint", "http://otel-collector.observability:4318",
                                                 "--tracing-sampling", "1"]
    assert "--tracing-endpoint" not in command(kube_desired(GATEWAY, "shoal:test", b"PEM"))
