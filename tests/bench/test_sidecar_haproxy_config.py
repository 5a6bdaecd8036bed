"""The HAProxy sidecar's configuration, in both modes, checked by HAProxy itself (`haproxy -c`)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from bench import sidecar_haproxy
from tests.support.ca import TestCA


def written(tmp_path, mode: str):
    ca = TestCA()
    credential = ca.credential("spiffe://cluster.local/ns/bench/sa/default")
    (tmp_path / "cert.pem").write_bytes(credential.chain_pem + credential.key_pem)
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(ca.bundle_pem)
    path = tmp_path / "haproxy.cfg"
    path.write_text(sidecar_haproxy.config(tmp_path, bundle, mode))
    return path


@pytest.mark.parametrize("mode", sidecar_haproxy.MODES)
def test_haproxy_accepts_the_sidecar_config(tmp_path, mode):
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed; scripts/setup.sh installs it")
    path = written(tmp_path, mode)
    text = path.read_text()
    assert f"  mode {mode}\n" in text
    assert ("http-reuse always" in text) == (mode == "http")
    checked = subprocess.run(["haproxy", "-c", "-f", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_an_unknown_mode_is_refused_with_the_modes_named(tmp_path):
    with pytest.raises(ValueError, match="tcp, http"):
        sidecar_haproxy.config(tmp_path, tmp_path / "bundle.pem", "udp")
