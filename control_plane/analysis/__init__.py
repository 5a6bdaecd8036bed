"""Config analysis (`shoal check`, `shoal local apply`, mesh objects' status): what is wrong, where, what to do.

    findings = analyze(objects)          # every object of a cluster, Kubernetes-shaped dicts
    about_mine = concerning(findings, applied_keys)

Pure: objects in, frozen `Finding`s out, sorted by object then field. The
objects go through the same `Translator` the control plane runs, so what
the analysis reports is what the mesh does; `checks` adds what no single
object shows (a route to a host with no Service, a policy that selects no
pod, a STRICT destination with clients outside the mesh).
"""

from __future__ import annotations

from typing import Iterable

from control_plane.analysis import checks, translated
from control_plane.analysis.findings import ANALYSIS_CODES, INVALID_OBJECT, Code, Finding, Severity
from control_plane.analysis.status import status_of
from control_plane.translate import Translator
from shoal.model import ResourceType
from shoal.store import Event


def analyze(objects: Iterable[dict]) -> list[Finding]:
    objects = [o for o in objects if isinstance(o, dict)]
    translator = Translator()
    for obj in objects:
        translator.apply_event(Event("ADDED", obj))
    translator.flush()
    found = translated.from_translator(translator.problems())
    refused = {f.key for f in found if f.code == INVALID_OBJECT}
    view = checks.View(objects, valid={k for k in translator.objects() if k not in refused},
                       model_hosts={s.hostname for s in translator.snapshot()[ResourceType.SERVICE].values()})
    for check in checks.CHECKS:
        found.extend(check(view))
    return sorted(set(found), key=lambda f: (f.namespace, f.kind, f.name, f.field, f.code.code, f.message))


def concerning(findings: Iterable[Finding], keys: Iterable[tuple[str, str, str]]) -> list[Finding]:
    """The findings about the objects `keys` ((kind, namespace, name); namespace "" when cluster-scoped)."""
    wanted = set(keys)
    return [f for f in findings if f.key in wanted]


__all__ = ["ANALYSIS_CODES", "Code", "Finding", "Severity", "analyze", "concerning", "status_of"]
