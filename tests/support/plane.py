"""The real control plane, in-process on loopback: its own CA, a ConfigState the test drives,
bootstrap tokens in a temp dir, ephemeral ports. The control plane's, the ztunnel's and the
waypoint's tests start one to talk to."""

from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Iterable

from control_plane.authn import LocalAuthenticator
from control_plane.ca import CertificateAuthority, generate_root
from control_plane.server import ConfigServer, Endpoints
from control_plane.state import ConfigState
from shoal import tokens
from shoal.config_client import ClientSettings, ConfigClient
from shoal.model import Protocol, Workload, freeze_labels

TD = "cluster.local"
NODE_TOKENS = {"node1": "tok-node1-" + "a" * 20, "node2": "tok-node2-" + "b" * 20}


def workload(i: int, node: str = "node1", namespace: str = "shop", sa: str = "default", **kw) -> Workload:
    return Workload(uid=f"uid-{i}", name=f"pod-{i}", namespace=namespace, service_account=sa, node=node,
                    ips=(f"198.19.{1 if node == 'node1' else 2}.{i % 250 + 2}",),
                    labels=freeze_labels({"app": f"app{i % 7}"}), protocol=Protocol.HBONE, **kw)


@dataclass
class Plane:
    server: ConfigServer
    state: ConfigState
    authority: CertificateAuthority
    run_dir: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.grpc_port}"

    def settings(self, node: str = "node1", token: str | None = None, **kw) -> ClientSettings:
        if "waypoint_namespace" in kw:
            node = ""
        return ClientSettings(target=self.target, bundle_pem=self.authority.bundle_pem,
                              token=token if token is not None else NODE_TOKENS.get(node, "none"),
                              node=node, backoff_initial=0.05, backoff_max=0.5, **kw)

    def sa_token(self, namespace: str, sa: str) -> str:
        return tokens.local_service_account_token(self.run_dir, namespace, sa)

    def client(self, node: str = "node1", on_update=None, **kw) -> ConfigClient:
        return ConfigClient(self.settings(node, **kw), on_update)


async def start_plane(run_dir: Path, state: ConfigState | None = None, synced: bool = True,
                      grpc_port: int = 0, authority: CertificateAuthority | None = None,
                      authenticator: Any = None) -> Plane:
    """`authority` and `authenticator` replace the plane's own (a fresh root; the bootstrap tokens)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "bootstrap-tokens.json").write_text(json.dumps({t: n for n, t in NODE_TOKENS.items()}))
    authority = authority or CertificateAuthority(generate_root(TD), trust_domain=TD)
    state = state or ConfigState()
    auth = authenticator or LocalAuthenticator(run_dir / "bootstrap-tokens.json",
                                               tokens.token_key(run_dir, create=True))
    server = ConfigServer(state=state, authority=authority, authenticator=auth,
                          endpoints=Endpoints("127.0.0.1", grpc_port, "127.0.0.1", 0))
    await server.start()
    if synced:
        server.mark_synced()
    return Plane(server, state, authority, run_dir)


@asynccontextmanager
async def running_plane(run_dir: Path, resources: Iterable[Any] = (), **kw) -> AsyncIterator[Plane]:
    """A plane holding `resources` from the start, stopped after the body; kw as for `start_plane`."""
    plane = await start_plane(run_dir, **kw)
    if resources := list(resources):
        plane.state.apply(resources)
    try:
        yield plane
    finally:
        await plane.server.stop(0)


@asynccontextmanager
async def running(client: ConfigClient) -> AsyncIterator[ConfigClient]:
    """The client watching for the body, stopped after it."""
    task = asyncio.create_task(client.run())
    try:
        yield client
    finally:
        client.stop()
        await task
