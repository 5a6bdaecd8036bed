"""Writes an OCI image archive from layer tarballs and the final stage of a Dockerfile.

`make image` (scripts/image/build.sh) builds the image's root filesystems with mmdebstrap,
then calls this to make `build/shoal-<version>.oci.tar`: an OCI image layout (oci-layout,
index.json, blobs/sha256/...) in one tar, with a `manifest.json` naming the same blobs, as
`docker save` writes it since Docker 25; `ctr images import`, `kind load image-archive`,
`docker load`, `minikube image load` and `skopeo copy oci-archive:...` take it as it is.

The image's settings (ENV, USER, WORKDIR, LABEL, CMD) are read from the Dockerfile's final
stage, so the archive and a `docker build` agree on them by construction. An instruction
this writer does not carry (ENTRYPOINT, EXPOSE, ...) is refused rather than dropped.

Standard library only: it runs with Debian's python3, before any virtual environment exists.

    python3 scripts/image/oci.py --dockerfile Dockerfile --name shoal --tag 0.1.0 \\
        --layer base.tar --layer shoal-layer.tar --output build/shoal-0.1.0.oci.tar
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import platform
import shlex
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
# The settings a container runtime takes from an image config, and the Dockerfile
# instructions that only shape the build. Anything else is refused.
CARRIED = {"ENV", "USER", "WORKDIR", "LABEL", "CMD"}
BUILD_ONLY = {"FROM", "RUN", "COPY", "ADD", "ARG"}
ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64"}
CHUNK = 1 << 20


class ImageBuildError(Exception):
    """The archive cannot be written as asked; the message says what to change."""


@dataclass(frozen=True)
class ImageSettings:
    env: tuple[str, ...] = ()
    user: str = ""
    workdir: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    cmd: tuple[str, ...] = ()


@dataclass
class _Collecting:
    env: dict[str, str] = field(default_factory=dict)
    user: str = ""
    workdir: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    cmd: tuple[str, ...] = ()


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    joined: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole = (pending + stripped).strip()
        pending = ""
        if whole:
            word, _, rest = whole.partition(" ")
            joined.append((word.upper(), rest.strip()))
    if pending.strip():
        raise ImageBuildError("the Dockerfile ends in a line continuation (a trailing backslash)")
    return joined


def _pairs(instruction: str, arguments: str) -> dict[str, str]:
    """KEY=VALUE words (shell-quoted), as ENV and LABEL take them."""
    pairs = {}
    for word in shlex.split(arguments):
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise ImageBuildError(f"{instruction} {arguments!r}: write it as KEY=VALUE (the legacy 'KEY VALUE' "
                                  "form is not read by scripts/image/oci.py)")
        pairs[key] = value
    return pairs


def parse_dockerfile(text: str) -> ImageSettings:
    """The settings of the Dockerfile's final stage (after its last FROM)."""
    stages: list[list[tuple[str, str]]] = []
    for instruction, arguments in _instructions(text):
        if instruction == "FROM":
            stages.append([])
        elif not stages:
            if instruction != "ARG":
                raise ImageBuildError(f"{instruction} before the first FROM in the Dockerfile")
        else:
            stages[-1].append((instruction, arguments))
    if not stages:
        raise ImageBuildError("the Dockerfile has no FROM: it defines no image")
    final = _Collecting()
    for instruction, arguments in stages[-1]:
        if instruction == "ENV":
            final.env.update(_pairs(instruction, arguments))
        elif instruction == "LABEL":
            final.labels.update(_pairs(instruction, arguments))
        elif instruction == "USER":
            final.user = arguments
        elif instruction == "WORKDIR":
            final.workdir = arguments
        elif instruction == "CMD":
            try:
                cmd = json.loads(arguments)
            except json.JSONDecodeError:
                cmd = None
            if not isinstance(cmd, list) or not all(isinstance(word, str) for word in cmd):
                raise ImageBuildError(f"CMD {arguments}: write it in the JSON form, CMD [\"shoal\", \"--help\"]")
            final.cmd = tuple(cmd)
        elif instruction not in BUILD_ONLY:
            raise ImageBuildError(f"{instruction} in the Dockerfile's final stage: scripts/image/oci.py carries only "
                                  f"{', '.join(sorted(CARRIED))} into the image; teach it {instruction}, or `make image` "
                                  "and `docker build` would make different images")
    return ImageSettings(env=tuple(f"{key}={value}" for key, value in final.env.items()), user=final.user,
                         workdir=final.workdir, labels=tuple(sorted(final.labels.items())), cmd=final.cmd)


@dataclass(frozen=True)
class Blob:
    media_type: str
    digest: str  # sha256:<hex>
    size: int
    path: Path | None = None   # a file on disk, or
    data: bytes | None = None  # bytes in memory

    def descriptor(self, annotations: dict[str, str] | None = None) -> dict:
        described = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if annotations:
            described["annotations"] = annotations
        return described


def json_blob(media_type: str, document: dict) -> Blob:
    data = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    return Blob(media_type, "sha256:" + hashlib.sha256(data).hexdigest(), len(data), data=data)


def compressed_layer(layer: Path, cache: Path) -> tuple[Blob, str]:
    """The layer gzipped, and its diff_id (the digest of the uncompressed tar). The gzip is
    kept in `cache` under its diff_id, so an unchanged layer is not compressed again."""
    if not tarfile.is_tarfile(layer):
        raise ImageBuildError(f"layer {layer} is not a tar archive")
    raw = hashlib.sha256()
    with open(layer, "rb") as source:
        while chunk := source.read(CHUNK):
            raw.update(chunk)
    diff_id = "sha256:" + raw.hexdigest()
    cache.mkdir(parents=True, exist_ok=True)
    gz = cache / f"{raw.hexdigest()}.tar.gz"
    if not gz.exists():
        partial = gz.with_suffix(".partial")
        with open(layer, "rb") as source, open(partial, "wb") as sink:
            # mtime 0 and no file name: the same layer always compresses to the same bytes.
            with gzip.GzipFile(filename="", mode="wb", fileobj=sink, mtime=0, compresslevel=6) as packer:
                while chunk := source.read(CHUNK):
                    packer.write(chunk)
        os.replace(partial, gz)
    digest = hashlib.sha256()
    with open(gz, "rb") as packed:
        while chunk := packed.read(CHUNK):
            digest.update(chunk)
    return Blob(LAYER_TYPE, "sha256:" + digest.hexdigest(), gz.stat().st_size, path=gz), diff_id


def image_documents(settings: ImageSettings, layers: list[tuple[Blob, str]], *, name: str, tag: str,
                    architecture: str, created: str) -> tuple[Blob, Blob, dict]:
    """(config, manifest, index): what the archive holds besides the layers."""
    labels = dict(settings.labels)
    labels["org.opencontainers.image.version"] = tag
    config = {
        "architecture": architecture,
        "os": "linux",
        "created": created,
        "config": {"Env": list(settings.env), "User": settings.user, "WorkingDir": settings.workdir,
                   "Labels": labels, "Cmd": list(settings.cmd)},
        "rootfs": {"type": "layers", "diff_ids": [diff_id for _, diff_id in layers]},
        "history": [{"created": created, "created_by": f"scripts/image/build.sh: layer {i + 1}"}
                    for i in range(len(layers))],
    }
    config_blob = json_blob(CONFIG_TYPE, config)
    manifest = {"schemaVersion": 2, "mediaType": MANIFEST_TYPE, "config": config_blob.descriptor(),
                "layers": [blob.descriptor() for blob, _ in layers]}
    manifest_blob = json_blob(MANIFEST_TYPE, manifest)
    # containerd names an imported image from io.containerd.image.name; the OCI layout's
    # ref.name is the tag (skopeo and kind read it).
    index = {"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": [manifest_blob.descriptor({
        "io.containerd.image.name": f"docker.io/library/{name}:{tag}",
        "org.opencontainers.image.ref.name": tag,
    })]}
    return config_blob, manifest_blob, index


def _add(archive: tarfile.TarFile, name: str, size: int, source) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    archive.addfile(info, source)


def _add_directory(archive: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
    archive.addfile(info)


def docker_manifest(config: Blob, layers: list[Blob], *, name: str, tag: str) -> list[dict]:
    """manifest.json, as `docker save` writes it beside the OCI layout: what `docker load`
    before Docker 25, and loaders built on it (minikube's), read. It names the same blobs."""
    def path(blob: Blob) -> str:
        return "blobs/sha256/" + blob.digest.removeprefix("sha256:")
    return [{"Config": path(config), "RepoTags": [f"{name}:{tag}"], "Layers": [path(layer) for layer in layers]}]


def write_archive(output: Path, blobs: list[Blob], index: dict, docker: list[dict]) -> None:
    partial = output.with_name(output.name + ".partial")
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as archive:
        layout = json.dumps({"imageLayoutVersion": "1.0.0"}).encode()
        _add(archive, "oci-layout", len(layout), io.BytesIO(layout))
        _add_directory(archive, "blobs")
        _add_directory(archive, "blobs/sha256")
        for blob in blobs:
            name = "blobs/sha256/" + blob.digest.removeprefix("sha256:")
            if blob.path is not None:
                with open(blob.path, "rb") as source:
                    _add(archive, name, blob.size, source)
            else:
                _add(archive, name, blob.size, io.BytesIO(blob.data))
        for name, document in (("index.json", index), ("manifest.json", docker)):
            data = json.dumps(document, sort_keys=True, indent=2).encode()
            _add(archive, name, len(data), io.BytesIO(data))
    os.replace(partial, output)


def build(dockerfile: Path, layers: list[Path], *, name: str, tag: str, output: Path, cache: Path) -> dict:
    settings = parse_dockerfile(dockerfile.read_text())
    architecture = ARCHITECTURES.get(platform.machine())
    if architecture is None:
        raise ImageBuildError(f"no OCI architecture name known for this machine ({platform.machine()}); "
                              f"add it to ARCHITECTURES in {__file__}")
    if not layers:
        raise ImageBuildError("no --layer given: an image needs at least one")
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
    packed = [compressed_layer(layer, cache) for layer in layers]
    config, manifest, index = image_documents(settings, packed, name=name, tag=tag, architecture=architecture,
                                              created=created)
    output.parent.mkdir(parents=True, exist_ok=True)
    layer_blobs = [blob for blob, _ in packed]
    write_archive(output, layer_blobs + [config, manifest], index,
                  docker_manifest(config, layer_blobs, name=name, tag=tag))
    return index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="write an OCI image archive from layer tarballs and a Dockerfile's "
                                                 "final-stage settings")
    parser.add_argument("--dockerfile", type=Path, required=True, help="where ENV, USER, WORKDIR, LABEL, CMD come from")
    parser.add_argument("--layer", type=Path, action="append", default=[], required=True,
                        help="an uncompressed layer tarball, bottom first (repeat)")
    parser.add_argument("--name", required=True, help="image name, e.g. shoal")
    parser.add_argument("--tag", required=True, help="image tag, e.g. the package version")
    parser.add_argument("--output", type=Path, required=True, help="the .oci.tar to write")
    parser.add_argument("--cache", type=Path, help="where compressed layers are kept (default: beside --output)")
    args = parser.parse_args(argv)
    try:
        build(args.dockerfile, args.layer, name=args.name, tag=args.tag, output=args.output,
              cache=args.cache or args.output.parent / "image" / "layers")
    except (ImageBuildError, OSError) as e:
        print(f"shoal image: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
