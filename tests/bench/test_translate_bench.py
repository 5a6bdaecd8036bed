"""bench.translate: the cluster it builds, one small run's figures, and bad flags refused by name."""

from __future__ import annotations

import pytest

from bench import translate


def test_the_cluster_has_the_pods_asked_for_in_namespaces_of_256_with_half_enrolled():
    others, pods = translate.cluster(600, policies=3)
    assert len(pods) == 600 and len({p["status"]["podIP"] for p in pods}) == 600
    namespaces = [o for o in others if o["kind"] == "Namespace"]
    assert len(namespaces) == 3 and sum(1 for n in namespaces if n["metadata"]["labels"]) == 2
    assert sum(1 for o in others if o["kind"] == "AuthorizationPolicy") == 3


def test_one_small_run_publishes_every_pod_and_the_enrolled_as_hbone():
    figures = translate.one_run(512, changes=10, policies=2)
    assert figures["workloads"] == 512 and figures["hbone"] == 256


@pytest.mark.parametrize("argv, why", [(["--sizes", "1x"], "give pod counts as integers"),
                                       (["--sizes", "0"], "positive pod counts")])
def test_bad_flags_are_refused_saying_what_to_give(argv, why, capsys):
    with pytest.raises(SystemExit):
        translate.main(argv)
    assert why in capsys.readouterr().err
