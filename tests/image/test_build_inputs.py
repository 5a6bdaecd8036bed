"""The two ways to build the image make the same image (no root, no network).

The Dockerfile (for docker/buildkit) and `make image` (scripts/image/build.sh: mmdebstrap and
scripts/image/oci.py) must run the same steps from the same lists under image/, take the same
build context, and give the image the same settings; image/requirements.txt must pin what
pyproject.toml allows. And the archive writer must write what an OCI runtime reads.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import tarfile
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import shoal
from scripts.image import oci

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "Dockerfile").read_text()
BUILD_SH = (REPO / "scripts" / "image" / "build.sh").read_text()
STEP = re.compile(r"/tmp/shoal-(?:image|src/image)/([\w-]+\.sh)(?: +(/tmp/shoal-[\w/.-]+))?")


def steps(text: str) -> list[tuple[str, str]]:
    """(script, its first argument's file name) for each image/ script a build file runs, in order."""
    return [(script, Path(argument).name if argument else "") for script, argument in STEP.findall(text)]


def test_the_dockerfile_and_make_image_run_the_same_steps_with_the_same_lists():
    docker = sorted(steps(DOCKERFILE))
    make = sorted(steps(BUILD_SH))
    assert docker == [("build-venv.sh", "requirements.txt"), ("finish-runtime.sh", ""),
                      ("install-packages.sh", "build-packages.txt"), ("install-packages.sh", "packages.txt"),
                      ("install-shoal.sh", "shoal-src")], docker
    assert make == docker, f"make image runs {make}, the Dockerfile {docker}"
    for script in {script for script, _ in docker}:
        assert (REPO / "image" / script).exists(), f"image/{script} is named but missing"


def _packages(name: str) -> list[str]:
    lines = (REPO / "image" / name).read_text().splitlines()
    return [word for line in lines for word in line.split("#")[0].split()]


def test_the_runtime_packages_are_what_the_parts_need_and_the_build_tools_stay_out():
    runtime = _packages("packages.txt")
    for needed in ("python3", "python3-bpfcc", "libbpf1", "iptables", "iproute2"):
        assert needed in runtime
    assert not {"gcc", "python3-dev", "python3-venv"} & set(runtime), "build tools belong in build-packages.txt"


def test_requirements_pin_every_dependency_within_pyprojects_ranges():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pinned = {}
    for line in (REPO / "image" / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            requirement = Requirement(line)
            versions = [spec.version for spec in requirement.specifier if spec.operator == "=="]
            assert len(versions) == 1, f"image/requirements.txt: {line!r} is not pinned with =="
            pinned[canonicalize_name(requirement.name)] = versions[0]
    for dependency in project["dependencies"]:
        requirement = Requirement(dependency)
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{requirement.name} (pyproject.toml) is not pinned in image/requirements.txt; " \
                               "run scripts/image/lock.sh"
        assert requirement.specifier.contains(pinned[name], prereleases=True), \
            f"image/requirements.txt pins {name}=={pinned[name]}, outside pyproject's {requirement.specifier}; " \
            "run scripts/image/lock.sh"


def test_the_build_context_holds_every_package_the_wheel_ships():
    allowed = {line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    find = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    for pattern in find["include"]:
        package = pattern.split(".")[0].rstrip("*")
        assert package in allowed, f"pyproject ships {pattern} but .dockerignore leaves {package}/ out of the build"
    assert {"pyproject.toml", "README.md", "image"} <= allowed


def test_the_archive_takes_the_dockerfiles_settings():
    settings = oci.parse_dockerfile(DOCKERFILE)
    assert settings.user == "10001:10001"
    assert settings.cmd == ("shoal", "--help")
    assert any(variable.startswith("PATH=/opt/shoal/bin:") for variable in settings.env)
    assert dict(settings.labels)["org.opencontainers.image.title"] == "shoal"


@pytest.mark.parametrize("instruction", ["ENTRYPOINT [\"shoal\"]", "EXPOSE 15008", "VOLUME /data",
                                         "HEALTHCHECK CMD true", "STOPSIGNAL SIGINT"])
def test_a_setting_the_archive_writer_does_not_carry_is_refused(instruction):
    with pytest.raises(oci.ImageBuildError, match=instruction.split()[0]):
        oci.parse_dockerfile(f"FROM debian:bookworm AS build\nFROM debian:bookworm\n{instruction}\n")


def test_only_the_final_stage_counts_and_continuations_are_joined():
    settings = oci.parse_dockerfile('FROM a AS build\nUSER builder\nENV A=1\n'
                                    'FROM b\n# a comment\nENV A=2 \\\n    B="two words"\nUSER 7:7\nCMD ["x"]\n')
    assert settings == oci.ImageSettings(env=("A=2", "B=two words"), user="7:7", cmd=("x",))


@pytest.mark.parametrize("text, complaint", [
    ("USER 1\n", "before the first FROM"),
    ("# only a comment\n", "no FROM"),
    ("FROM a\nCMD shoal --help\n", "JSON form"),
    ("FROM a\nENV A 1\n", "KEY=VALUE"),
    ("FROM a\nENV A=1 \\\n", "continuation"),
])
def test_a_dockerfile_it_cannot_read_says_what_to_change(text, complaint):
    with pytest.raises(oci.ImageBuildError, match=complaint):
        oci.parse_dockerfile(text)


def _tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_the_archive_is_an_oci_layout_whose_digests_match_its_contents(tmp_path):
    layers = []
    for i, files in enumerate(({"etc/hello": b"base"}, {"opt/shoal/bin/shoal": b"#!/bin/sh\n"})):
        layers.append(tmp_path / f"layer{i}.tar")
        layers[-1].write_bytes(_tar(files))
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text('FROM x\nENV PATH=/opt/shoal/bin:/bin\nUSER 10001:10001\nCMD ["shoal"]\n')
    output = tmp_path / "out" / "image.oci.tar"
    oci.build(dockerfile, layers, name="shoal", tag="9.9.9", output=output, cache=tmp_path / "cache")

    with tarfile.open(output) as archive:
        members = {m.name: archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()}
    assert json.loads(members["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}

    def blob(descriptor: dict) -> bytes:
        data = members["blobs/sha256/" + descriptor["digest"].removeprefix("sha256:")]
        assert len(data) == descriptor["size"]
        assert "sha256:" + hashlib.sha256(data).hexdigest() == descriptor["digest"]
        return data

    index = json.loads(members["index.json"])
    [described] = index["manifests"]
    assert described["annotations"]["io.containerd.image.name"] == "docker.io/library/shoal:9.9.9"
    assert described["annotations"]["org.opencontainers.image.ref.name"] == "9.9.9"
    manifest = json.loads(blob(described))
    assert manifest["mediaType"] == oci.MANIFEST_TYPE
    config = json.loads(blob(manifest["config"]))
    assert config["config"]["User"] == "10001:10001"
    assert config["config"]["Cmd"] == ["shoal"]
    assert config["config"]["Labels"]["org.opencontainers.image.version"] == "9.9.9"
    assert config["os"] == "linux"
    diff_ids = [("sha256:" + hashlib.sha256(gzip.decompress(blob(layer))).hexdigest()) for layer in manifest["layers"]]
    assert diff_ids == config["rootfs"]["diff_ids"]
    assert [gzip.decompress(blob(layer)) for layer in manifest["layers"]] == [p.read_bytes() for p in layers]
    # manifest.json, as docker save writes it: the same config and layers, and the image's name.
    assert json.loads(members["manifest.json"]) == [{
        "Config": "blobs/sha256/" + manifest["config"]["digest"].removeprefix("sha256:"),
        "RepoTags": ["shoal:9.9.9"],
        "Layers": ["blobs/sha256/" + layer["digest"].removeprefix("sha256:") for layer in manifest["layers"]]}]


def test_an_unchanged_layer_compresses_to_the_same_blob_from_the_cache(tmp_path):
    layer = tmp_path / "layer.tar"
    layer.write_bytes(_tar({"a": b"x" * 1000}))
    first, diff_id = oci.compressed_layer(layer, tmp_path / "cache")
    cached = first.path.stat().st_mtime_ns
    again, same_diff_id = oci.compressed_layer(layer, tmp_path / "cache")
    assert (again.digest, same_diff_id) == (first.digest, diff_id)
    assert again.path.stat().st_mtime_ns == cached, "the cached gzip was written again"


def test_a_layer_that_is_not_a_tar_is_refused(tmp_path):
    layer = tmp_path / "layer.tar"
    layer.write_bytes(b"not a tar")
    with pytest.raises(oci.ImageBuildError, match="not a tar"):
        oci.compressed_layer(layer, tmp_path / "cache")


def test_the_archive_is_named_for_the_package_version():
    assert "archive=$repo/build/shoal-$version.oci.tar" in BUILD_SH
    assert '--tag "$version"' in BUILD_SH
    assert shoal.__version__ == tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
