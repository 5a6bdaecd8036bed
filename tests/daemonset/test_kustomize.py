"""shoal's kustomize renderer prints what `kubectl kustomize` prints, byte for byte, and
`shoal install --dry-run` prints that, with the image and options given."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

import shoal
from shoal.install import InstallError
from shoal.install.kustomize import ImageOverride, render, split_image
from support.cli import shoal as run_shoal

DAEMONSET = Path(__file__).resolve().parents[2] / "daemonset"
KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed: nothing to compare with")


def kubectl_kustomize(directory: Path) -> str:
    return subprocess.run([KUBECTL, "kustomize", str(directory)], check=True, capture_output=True,
                          text=True, timeout=120).stdout


def copy_with_image(tmp_path: Path, entry: dict) -> Path:
    """daemonset/ copied, its kustomization's `images:` entry for shoal replaced by `entry`."""
    copy = tmp_path / "daemonset"
    shutil.copytree(DAEMONSET, copy)
    kustomization = yaml.safe_load((copy / "kustomization.yaml").read_text())
    kustomization["images"] = [entry]
    (copy / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return copy


@needs_kubectl
@pytest.mark.parametrize("folder", ["", "crds"])
def test_the_renderer_prints_what_kubectl_kustomize_prints(folder):
    expected = kubectl_kustomize(DAEMONSET / folder)
    assert render(DAEMONSET / folder) == expected


@needs_kubectl
@pytest.mark.parametrize("reference, entry", [
    ("registry.example:5000/team/shoal:1.2", {"name": "shoal", "newName": "registry.example:5000/team/shoal",
                                              "newTag": "1.2"}),
    ("shoal:0.2.0-rc1", {"name": "shoal", "newName": "shoal", "newTag": "0.2.0-rc1"}),
    ("registry.example/shoal@sha256:" + "ab" * 32, {"name": "shoal", "newName": "registry.example/shoal",
                                                     "digest": "sha256:" + "ab" * 32}),
])
def test_an_image_given_is_what_kustomizes_images_would_set(tmp_path, reference, entry):
    expected = kubectl_kustomize(copy_with_image(tmp_path, entry))
    assert render(DAEMONSET, ImageOverride.parse(reference)) == expected
    assert reference in expected


@needs_kubectl
def test_install_dry_run_prints_kubectl_kustomize(tmp_path):
    assert run_shoal("install", "--dry-run").stdout == kubectl_kustomize(DAEMONSET)
    printed = run_shoal("install", "--dry-run", "--image", "registry.example/shoal:9.9").stdout
    expected = kubectl_kustomize(copy_with_image(tmp_path, {"name": "shoal", "newName": "registry.example/shoal",
                                                            "newTag": "9.9"}))
    assert printed == expected


def test_install_dry_run_sets_the_redirect_mode_it_is_given():
    printed = run_shoal("install", "--dry-run", "--redirect", "iptables").stdout
    (agent,) = [c for o in yaml.safe_load_all(printed) if o["kind"] == "DaemonSet"
                for c in o["spec"]["template"]["spec"]["containers"] if c["name"] == "node-agent"]
    assert agent["command"][agent["command"].index("--redirect") + 1] == "iptables"
    default = run_shoal("install", "--dry-run").stdout
    assert printed.replace("- iptables", "- auto", 1) == default


def test_the_image_is_tagged_with_the_package_version():
    printed = yaml.safe_load_all(render(DAEMONSET))
    images = {c["image"] for o in printed if o["kind"] in ("DaemonSet", "Deployment")
              for c in o["spec"]["template"]["spec"]["containers"]}
    assert images == {f"shoal:{shoal.__version__}"}


@pytest.mark.parametrize("reference, expected", [
    ("shoal:1.0", ImageOverride("shoal", "shoal", "1.0", None)),
    ("localhost:5000/shoal", ImageOverride("shoal", "localhost:5000/shoal", None, None)),
    ("localhost:5000/shoal:dev", ImageOverride("shoal", "localhost:5000/shoal", "dev", None)),
    ("r.example/a/b@sha256:00", ImageOverride("shoal", "r.example/a/b", None, "sha256:00")),
])
def test_image_references_parse(reference, expected):
    assert ImageOverride.parse(reference) == expected


@pytest.mark.parametrize("reference", ["", "registry.example/", "shoal:bad tag", "shoal:"])
def test_a_bad_image_reference_is_refused_saying_what_to_give(reference):
    with pytest.raises(InstallError, match="NAME:TAG"):
        ImageOverride.parse(reference)


def test_split_image_keeps_a_registry_port_in_the_name():
    assert split_image("localhost:5000/shoal") == ("localhost:5000/shoal", None, None)
    assert split_image("localhost:5000/shoal:1@sha256:ff") == ("localhost:5000/shoal", "1", "sha256:ff")


@pytest.mark.parametrize("field", [{"namespace": "elsewhere"}, {"patches": [{"path": "x.yaml"}]},
                                   {"commonLabels": {"a": "b"}}])
def test_a_kustomization_beyond_the_renderer_is_refused_not_rendered_differently(tmp_path, field):
    copy = tmp_path / "daemonset"
    shutil.copytree(DAEMONSET, copy)
    kustomization = yaml.safe_load((copy / "kustomization.yaml").read_text())
    (copy / "kustomization.yaml").write_text(yaml.safe_dump({**kustomization, **field}))
    with pytest.raises(InstallError, match=f"uses {next(iter(field))}.*kubectl kustomize"):
        render(copy)
    result = run_shoal("install", "--dry-run", "--manifests", str(copy), check=False)
    assert result.returncode != 0 and result.stdout == ""
    assert "kubectl kustomize" in result.stderr


def test_a_missing_manifest_is_named(tmp_path):
    copy = tmp_path / "daemonset"
    shutil.copytree(DAEMONSET, copy)
    (copy / "ztunnel.yaml").unlink()
    with pytest.raises(InstallError, match="names ztunnel.yaml, which cannot be read"):
        render(copy)
