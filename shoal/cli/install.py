"""`shoal install` and `shoal uninstall`: the mesh on a Kubernetes cluster.

    shoal install [--dry-run] [--image NAME:TAG] [--redirect MODE] [--no-crds] [--kubeconfig PATH] [--context NAME]
    shoal uninstall [--crds] [--kubeconfig PATH] [--context NAME]

`install` renders daemonset/ as `kubectl kustomize daemonset/` does (no kubectl
needed) and server-side applies it (field manager `shoal`), after the CRDs
shoal reads that the cluster lacks (daemonset/crds/). `--dry-run` prints the
rendered manifests and touches nothing. `uninstall` has every node cleaned by
`shoal node-agent --cleanup` before the ztunnels go, then removes the rest.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# daemonset/ sits beside the packages: in the source tree, and in the wheel as a data package.
DEFAULT_MANIFESTS = Path(__file__).resolve().parents[2] / "daemonset"


def _target_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", help="kubeconfig file (default $KUBECONFIG or ~/.kube/config, "
                                             "else the in-cluster service account)")
    parser.add_argument("--context", help="kubeconfig context (default its current-context)")
    parser.add_argument("--manifests", type=Path, default=DEFAULT_MANIFESTS,
                        help="the kustomization to install (default: shoal's daemonset/, beside its packages "
                             "in the source tree or the installed wheel)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for each step")


def register(subparsers) -> None:
    p = subparsers.add_parser("install", help="install the mesh on a Kubernetes cluster (or print it: --dry-run)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="print the manifests (as `kubectl kustomize`); "
                                                          "touch no cluster")
    p.add_argument("--image", help="the image every part runs, NAME:TAG or NAME@DIGEST "
                                   "(default shoal:<version>, as kustomization.yaml's images: sets it)")
    p.add_argument("--redirect", choices=("iptables", "ebpf", "auto"),
                   help="the node agent's redirect mode (default: the manifests', auto)")
    p.add_argument("--no-crds", dest="crds", action="store_false",
                   help="do not create the CRDs shoal reads when the cluster lacks them (daemonset/crds/)")
    _target_arguments(p)
    p.set_defaults(func=cmd_install)

    u = subparsers.add_parser("uninstall", help="remove the mesh from a Kubernetes cluster, nodes cleaned first",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    u.add_argument("--crds", action="store_true",
                   help="also delete the CRDs shoal created (not those it found); this deletes every object of "
                        "their kinds")
    _target_arguments(u)
    u.set_defaults(func=cmd_uninstall)


def _rendered(args, image: str | None = None, redirect: str | None = None) -> list[dict]:
    from shoal.install.kustomize import ImageOverride, render_objects
    from shoal.install.plan import set_redirect

    objects = render_objects(args.manifests, ImageOverride.parse(image) if image else None)
    if redirect:
        set_redirect(objects, redirect)
    return objects


def cmd_install(args) -> int:
    from shoal.install import InstallError
    from shoal.install.kustomize import dump, render_objects

    try:
        objects = _rendered(args, args.image, args.redirect)
        if args.dry_run:
            sys.stdout.write(dump(objects))
            return 0
        from shoal.install import cluster as kube
        from shoal.install.plan import plan_install

        crds = render_objects(args.manifests / "crds") if args.crds else []
        target = kube.Cluster(kube.api_client(args.kubeconfig, args.context))
        present = kube.present_crds(target, [c["metadata"]["name"] for c in crds])
        plan = plan_install(objects, crds, present, with_crds=args.crds)
        kube.install(target, plan, sys.stdout, timeout=args.timeout)
    except InstallError as e:
        print(f"shoal install: {e}", file=sys.stderr)
        return 1
    print("installed; `kubectl -n shoal-system get pods` shows the mesh coming up")
    return 0


def cmd_uninstall(args) -> int:
    from shoal.install import InstallError
    from shoal.install import cluster as kube
    from shoal.install.plan import plan_uninstall

    try:
        objects = _rendered(args)
        target = kube.Cluster(kube.api_client(args.kubeconfig, args.context))
        plan = plan_uninstall(objects, kube.shoal_crds(target) if args.crds else set(), with_crds=args.crds)
        kube.uninstall(target, plan, sys.stdout, timeout=args.timeout)
    except InstallError as e:
        print(f"shoal uninstall: {e}", file=sys.stderr)
        return 1
    print("uninstalled" + ("" if args.crds else "; the CRDs and your mesh config (Gateways, routes, policies) "
                                                  "are kept: `shoal uninstall --crds` removes the CRDs shoal made"))
    return 0
