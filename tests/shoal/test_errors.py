"""Every part's exception root derives from shoal.errors.ShoalError, so a caller can catch shoal's
own failures in one clause (DESIGN.md, "Errors"; STYLE.md, one hierarchy per package)."""

from __future__ import annotations

import pytest

from control_plane.errors import ControlPlaneError
from control_plane.sources import SourceError as ConfigSourceError
from node_agent.errors import NodeAgentError, SourceError as PodSourceError
from shoal.api.convert import ConversionError
from shoal.errors import ShoalError
from shoal.handoff import HandoffError
from shoal.local.errors import ClusterError, LocalClusterError
from shoal.local.kubelet import KubeletError
from shoal.local.manifest import ManifestError
from shoal.local.services import ProxyRulesError
from shoal.netns import NetnsError
from shoal.store import StoreError
from shoal.tokens import TokenError
from shoal.transparent import TransparentError


@pytest.mark.parametrize("error, root", [
    (ControlPlaneError, ShoalError),
    (ConfigSourceError, ControlPlaneError),
    (NodeAgentError, ShoalError),
    (PodSourceError, NodeAgentError),
    (StoreError, ShoalError),
    (HandoffError, ShoalError),
    (NetnsError, ShoalError),
    (TokenError, ShoalError),
    (TransparentError, ShoalError),
    (ConversionError, ShoalError),
    (ConversionError, ValueError),   # callers that catch ValueError keep working
    (LocalClusterError, ShoalError),
    (ClusterError, LocalClusterError),
    (KubeletError, LocalClusterError),
    (ManifestError, LocalClusterError),
    (ProxyRulesError, LocalClusterError),
])
def test_each_part_roots_in_shoal_error(error, root):
    assert issubclass(error, root)


def test_a_refused_manifest_is_caught_as_a_local_cluster_error():
    with pytest.raises(LocalClusterError, match="refused, nothing was applied"):
        raise ManifestError("app.yaml", ["Pod default/x: spec: is required"])
