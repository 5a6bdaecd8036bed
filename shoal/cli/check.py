"""`shoal check`: is the mesh able to run here, is it healthy, and is its config what was meant?

    shoal check [--cluster NAME | --kubeconfig FILE [--context C]] [--only preflight,health,config]
                [-o text|json] [-v]

Three parts, as `linkerd check` and `istioctl analyze` have them:
- pre-flight: privileges, cgroups, iptables, what each redirect mode needs;
- health: the cluster daemon, every system and waypoint pod Ready, every proxy
  at the control plane's latest config with no nack, certificates valid;
- config analysis: every object through the control plane's translator, and
  what no single object shows (control_plane.analysis).

Only problems are printed (`-v` lists what passed too). The exit status is 0
when nothing was found, 1 when anything was, 2 when the check could not run.

The target is a local cluster (`--cluster`, or the current one), or a
Kubernetes cluster (`--kubeconfig`, `--context`, or `$KUBECONFIG` with no
`--cluster`; see `check_kube`): each is a `Target` with the same methods.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Protocol

from shoal.cli import context
from shoal.cli.output import fail
from shoal.kube_mesh import add_target_arguments, connect, on_kubernetes
from shoal.preflight import Check

PARTS = ("preflight", "health", "config")


class Target(Protocol):
    name: str

    def preflight(self) -> list[Check]: ...
    def objects(self) -> list[dict]: ...
    def health(self) -> list[Check]: ...


@dataclass
class LocalTarget:
    name: str

    def __post_init__(self) -> None:
        from shoal.local.layout import Layout

        self.layout = Layout(self.name)

    def up(self) -> bool:
        return self.layout.store().exists()

    def preflight(self) -> list[Check]:
        """This machine's: the local cluster runs on it."""
        from shoal.local.cluster import ClusterConfig
        from shoal.preflight import preflight, probe

        config = ClusterConfig.read(self.layout)
        return preflight(probe(), config.redirect if config else "auto")

    def objects(self) -> list[dict]:
        store = self.layout.store()
        return [obj for kind in store.kinds() for obj in store.list(kind)[0]]

    def health(self) -> list[Check]:
        from shoal.local import health

        return health.judge(health.gather(self.layout))


def _parts(text: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise argparse.ArgumentTypeError(f"{','.join(unknown) or text!r}: choose from {','.join(PARTS)}")
    return parts


def register(sub) -> None:
    p = sub.add_parser("check", help="check pre-flight, health and config of a cluster (exit 1 on any problem)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    context.add_option(p)
    add_target_arguments(p)
    p.add_argument("--only", type=_parts, default=PARTS, metavar="PARTS",
                   help=f"comma-separated parts to run (default: {','.join(PARTS)})")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text", help="output format (default: text)")
    p.add_argument("-v", "--verbose", action="store_true", help="also list the checks that passed (default: off)")
    p.set_defaults(func=cmd_check)


def run(target: Target, parts: tuple[str, ...]) -> dict:
    """Every part asked for, as plain data: {"preflight": [Check], "health": [Check], "config": [Finding]}."""
    out: dict = {}
    if "preflight" in parts:
        out["preflight"] = target.preflight()
    if "health" in parts:
        out["health"] = target.health()
    if "config" in parts:
        from control_plane.analysis import analyze

        out["config"] = analyze(target.objects())
    return out


def problems(result: dict) -> int:
    return (sum(1 for part in ("preflight", "health") for c in result.get(part, ()) if c.failed)
            + len(result.get("config", ())))


def render(result: dict, cluster: str, verbose: bool) -> str:
    lines = []
    titles = {"preflight": "Pre-flight", "health": f"Health of cluster {cluster}", "config": "Config analysis"}
    for part in PARTS:
        if part not in result:
            continue
        items = result[part]
        shown = [c.line() for c in items if verbose or c.failed] if part != "config" else [f.line() for f in items]
        if shown:
            lines.append(titles[part])
            lines.extend(f"  {line}" for line in shown)
    count = problems(result)
    checked = sum(len(result.get(p, ())) for p in ("preflight", "health"))
    if count:
        lines.append(f"{count} problem{'s' if count != 1 else ''} found in cluster {cluster}")
    else:
        lines.append(f"No problems found in cluster {cluster} ({checked} checks"
                     + (", config analysed" if "config" in result else "") + ")")
    return "\n".join(lines)


def to_json(result: dict, cluster: str) -> dict:
    doc = {"cluster": cluster, "problems": problems(result)}
    for part, items in result.items():
        doc[part] = [i.to_json() for i in items]
    return doc


def cmd_check(args) -> int:
    from shoal.errors import ShoalError

    try:
        if on_kubernetes(args):
            from shoal.cli.check_kube import KubeTarget

            target = KubeTarget(connect(args))
            cluster = args.context or "kubernetes"
            result = run(target, args.only)
        else:
            cluster = context.resolve(args)
            target = LocalTarget(cluster)
            if not target.up() and args.only != ("preflight",):
                return fail(f"cluster {cluster!r} is not up; run `shoal local up --cluster {cluster}`, "
                            "or `shoal check --only preflight` to see whether it can run here", 2)
            result = run(target, args.only)
    except ShoalError as e:   # the API server refused or could not be reached: the message says which
        return fail(str(e), 2)
    if args.output == "json":
        print(json.dumps(to_json(result, cluster), indent=2))
    else:
        print(render(result, cluster, args.verbose))
    sys.stdout.flush()
    return 1 if problems(result) else 0
