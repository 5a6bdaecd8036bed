"""Renders a kustomization as `kubectl kustomize` (kustomize v5) does, for the subset shoal's use.

`daemonset/` uses `resources:` (files) and `images:`, and nothing else, so
`shoal install` needs no kubectl: this module loads the resources, sets the
images, orders the objects the way kustomize's default ("legacy") sort does,
and prints them as kustomize prints them (keys sorted, block style, strings
that would read as another type in double quotes). A kustomization that uses
anything more is refused, naming the field, rather than rendered differently.
`tests/daemonset/test_kustomize.py` holds the output equal to kubectl's,
byte for byte.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import yaml

from shoal.install import InstallError

# Fields of a Kustomization this renderer carries out; any other is refused.
SUPPORTED_FIELDS = {"apiVersion", "kind", "resources", "images"}

# kustomize's legacy order: these kinds first, in this order, then every other
# kind, then the webhook configurations; within one kind, by group/version,
# then namespace and name.
ORDER_FIRST = (
    "Namespace", "ResourceQuota", "StorageClass", "CustomResourceDefinition", "ServiceAccount",
    "PodSecurityPolicy", "Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding", "ConfigMap", "Secret",
    "Endpoints", "Service", "LimitRange", "PriorityClass", "PersistentVolume", "PersistentVolumeClaim",
    "Deployment", "StatefulSet", "CronJob", "PodDisruptionBudget",
)
ORDER_LAST = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")

# Where kustomize's image transformer looks: containers and initContainers of a pod
# spec, wherever the pod spec sits (Pod, template of a workload, jobTemplate).
CONTAINER_LISTS = ("containers", "initContainers")


@dataclasses.dataclass(frozen=True)
class ImageOverride:
    """One entry of `images:`: the image `name` becomes `new_name`, with `new_tag` or `digest`."""
    name: str
    new_name: str | None = None
    new_tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, reference: str, name: str = "shoal") -> "ImageOverride":
        """`--image NAME[:TAG|@DIGEST]` as an override of the image `name`."""
        match = re.fullmatch(r"(?P<name>(?:[^\s/@:]+(?::\d+)?/)?[^\s@:]*[^\s@:/])"
                             r"(?::(?P<tag>\w[\w.-]{0,127}))?(?:@(?P<digest>[a-z0-9]+:[0-9a-fA-F]+))?", reference)
        if match is None:
            raise InstallError(f"--image {reference!r} is not an image reference; give NAME:TAG, "
                               "e.g. registry.example/shoal:0.1.0")
        return cls(name=name, new_name=match["name"], new_tag=match["tag"], digest=match["digest"])

    def apply(self, image: str) -> str | None:
        """The image with this override applied, or None when it names another image."""
        base, tag, digest = split_image(image)
        if base != self.name:
            return None
        base = self.new_name or base
        if self.digest:
            return f"{base}@{self.digest}"
        if self.new_tag:
            return f"{base}:{self.new_tag}"
        return base + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """(name, tag, digest) of an image reference; a registry's :port is part of the name."""
    digest = None
    if "@" in image:
        image, digest = image.split("@", 1)
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon + 1:], digest
    return image, None, digest


def load_kustomization(directory: Path) -> dict:
    path = directory / "kustomization.yaml"
    try:
        kustomization = yaml.safe_load(path.read_text())
    except OSError as e:
        raise InstallError(f"cannot read {path}: {e.strerror}; pass the folder of shoal's manifests "
                           "(daemonset/ in the source tree)") from e
    except yaml.YAMLError as e:
        raise InstallError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(kustomization, dict) or kustomization.get("kind") != "Kustomization":
        raise InstallError(f"{path} is not a Kustomization")
    unsupported = sorted(set(kustomization) - SUPPORTED_FIELDS)
    if unsupported:
        raise InstallError(f"{path} uses {', '.join(unsupported)}, which shoal's renderer does not carry out "
                           f"(it knows {', '.join(sorted(SUPPORTED_FIELDS))}); render it with `kubectl kustomize`")
    return kustomization


def overrides_of(kustomization: dict) -> list[ImageOverride]:
    return [ImageOverride(name=entry["name"], new_name=entry.get("newName"),
                          new_tag=None if entry.get("newTag") is None else str(entry["newTag"]),
                          digest=entry.get("digest"))
            for entry in kustomization.get("images") or []]


def load_objects(directory: Path, kustomization: dict) -> list[dict]:
    objects = []
    for resource in kustomization.get("resources") or []:
        path = directory / resource
        if path.is_dir():
            raise InstallError(f"{directory / 'kustomization.yaml'} names the folder {resource}; shoal's renderer "
                               "takes files only")
        try:
            documents = list(yaml.safe_load_all(path.read_text()))
        except OSError as e:
            raise InstallError(f"{directory / 'kustomization.yaml'} names {resource}, which cannot be read: "
                               f"{e.strerror}") from e
        except yaml.YAMLError as e:
            raise InstallError(f"{path} is not valid YAML: {e}") from e
        for document in documents:
            if document is None:
                continue
            if not isinstance(document, dict) or not document.get("kind") or not document.get("apiVersion"):
                raise InstallError(f"{path}: every document must be a Kubernetes object with apiVersion and kind")
            objects.append(document)
    return objects


def set_images(obj: dict, overrides: list[ImageOverride]) -> None:
    for pod_spec in _pod_specs(obj):
        for list_name in CONTAINER_LISTS:
            for container in pod_spec.get(list_name) or []:
                for override in overrides:
                    changed = override.apply(container.get("image", ""))
                    if changed is not None:
                        container["image"] = changed
                        break


def _pod_specs(node):
    """Every mapping that holds a `containers` list, anywhere in the object."""
    if isinstance(node, dict):
        if isinstance(node.get("containers"), list):
            yield node
        for value in node.values():
            yield from _pod_specs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _pod_specs(value)


def sort_key(obj: dict) -> tuple:
    kind = obj["kind"]
    if kind in ORDER_FIRST:
        rank = ORDER_FIRST.index(kind) - len(ORDER_FIRST)
    elif kind in ORDER_LAST:
        rank = ORDER_LAST.index(kind) + 1
    else:
        rank = 0
    group, _, version = obj["apiVersion"].rpartition("/")
    metadata = obj.get("metadata") or {}
    gvk = "_".join((group or "~G", version, kind))
    return rank, gvk, metadata.get("namespace") or "", metadata.get("name") or ""


def render_objects(directory: Path, image: ImageOverride | None = None) -> list[dict]:
    """The objects `kubectl kustomize directory` prints, in its order; `image` overrides `images:`."""
    kustomization = load_kustomization(directory)
    overrides = [o for o in overrides_of(kustomization) if image is None or o.name != image.name]
    if image is not None:
        overrides.insert(0, image)
    objects = load_objects(directory, kustomization)
    for obj in objects:
        set_images(obj, overrides)
    return sorted(objects, key=sort_key)


def render(directory: Path, image: ImageOverride | None = None) -> str:
    """`kubectl kustomize directory`, as text."""
    return dump(render_objects(directory, image))


class _KustomizeDumper(yaml.SafeDumper):
    """Prints YAML as kustomize (go-yaml v3) does: a string that would read back as
    another type ("1", "true", "") is double-quoted; otherwise the emitter's own choice."""


def _represent_str(dumper: _KustomizeDumper, value: str):
    style = None
    if value == "" or dumper.resolve(yaml.ScalarNode, value, (True, False)) != "tag:yaml.org,2002:str":
        style = '"'
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_KustomizeDumper.add_representer(str, _represent_str)


def dump(objects: list[dict]) -> str:
    return "---\n".join(yaml.dump(obj, Dumper=_KustomizeDumper, sort_keys=True, default_flow_style=False,
                                  allow_unicode=True, width=80) for obj in objects)
