"""Roots rotate without an outage (issue 9, item 7), end to end in-process: the real control plane
(support.plane) with its CA in a FileRootStore and the root keeper, and two proxies, each with the
real Sign client (reading the bundle file through TrustBundle, as the ztunnel does) and a
CertManager whose TLS contexts trust the bundle of each Sign answer. Real mTLS HBONE on loopback.

The root rotates twice, the second time while the first old root is still retiring. One HBONE
connection, opened at the start, stays open and carries bytes throughout; new connections, both
ways, keep working at every step, also when one proxy holds a leaf of the old root and the other a
leaf of the new one (their renewals never fall together).

The clock is fake (leaf lifetime 60 s, margin 5 s), and stays within the five minutes that leaves are
backdated, so that real TLS, which reads the real clock, accepts every certificate issued on it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket

from control_plane import ca_store
from control_plane.app import RootKeeper, publish_bundle
from control_plane.ca import CertificateAuthority
from control_plane.rotation import fingerprint
from shoal import identity
from shoal.certs import CertManager
from shoal.config_client import ClientSettings, SignClient
from shoal.hbone_io import HboneSession
from shoal.hbone_pool import Key, connector
from shoal.hbone_relay import Side
from shoal.identity import SpiffeId
from shoal.trust_bundle import TrustBundle

from support.plane import NODE_TOKENS, TD, running_plane, workload
from support.polling import eventually_async

ALICE = SpiffeId(TD, "shop", "alice")
BOB = SpiffeId(TD, "shop", "bob")
LEAF_TTL = dt.timedelta(seconds=60)
MARGIN = dt.timedelta(seconds=5)
STEP = dt.timedelta(seconds=20)     # the fake clock moves by at most this much between renewals


class Echo(Side):
    """The server's side of a tunnel: sends back what it receives."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def write(self, data: bytes) -> None:
        self.stream.write(data)

    def write_eof(self) -> None:
        self.stream.write_eof()

    def abort(self) -> None:
        self.stream.abort()


class Received(Side):
    """The client's side of a tunnel: keeps what comes back."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data


class Tunnel:
    def __init__(self, session: HboneSession, stream) -> None:
        self.session, self.stream, self.received = session, stream, Received()
        stream.attach(self.received)

    async def round_trip(self, payload: bytes) -> None:
        start = len(self.received.data)
        self.stream.write(payload)
        await eventually_async(lambda: bytes(self.received.data[start:]) == payload, 10,
                               lambda: f"the echo of {payload!r}; got {bytes(self.received.data[start:])!r}")


class Proxy:
    """One node's proxy, reduced to what rotation touches: the Sign client on the bundle file, the
    certificate manager, an HBONE server presenting its identity, and HBONE clients."""

    def __init__(self, plane, node: str, me: SpiffeId, bundle_file, clock, roots: dict) -> None:
        self.me = me
        self.roots = roots   # a root's subject -> its fingerprint, to name a leaf's issuer
        self.bundle = TrustBundle(bundle_file)
        self.sign_client = SignClient(ClientSettings(target=plane.target, bundle_pem=self.bundle.current,
                                                     token=NODE_TOKENS[node], node=node))
        self.certs = CertManager(self.sign_client.sign, clock=clock)
        self.connect = connector(self._open_socket, self.certs.client_context, timeout=5)
        self.listener = socket.socket()
        self.handshakes_failed: list[str] = []
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        await self.certs.get(self.me)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.listener.setblocking(False)
        self._tasks.add(asyncio.ensure_future(self._accept()))

    @property
    def address(self) -> tuple[str, int]:
        return self.listener.getsockname()[:2]

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(self.listener)
            task = asyncio.ensure_future(self._serve(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: socket.socket) -> None:
        # As the ztunnel's inbound does: the context of the identity's current credential, per connection.
        try:
            context = await self.certs.server_context(self.me)
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: HboneSession(False, on_request=self._tunnel), conn, ssl=context, ssl_handshake_timeout=5)
        except Exception as e:  # noqa: BLE001 - the test reads why
            self.handshakes_failed.append(f"{type(e).__name__}: {e}")
            conn.close()

    async def _tunnel(self, session: HboneSession, stream) -> None:
        session.accept(stream)
        stream.attach(Echo(stream))

    async def _open_socket(self, key: Key, timeout: float) -> socket.socket:
        sock = socket.socket()
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, key.destination)
        return sock

    async def tunnel_to(self, peer: "Proxy") -> Tunnel:
        """A new HBONE connection (a new TLS handshake, with both sides' current credentials)."""
        session = await self.connect(Key("", self.me, peer.address, peer.me))
        return Tunnel(session, await session.open("127.0.0.1:8080", timeout=5))

    async def renew(self) -> identity.Credential:
        # What the background loop (`run()`) does at half life: a fetch that replaces the credential.
        return await self.certs._fetch(self.me)

    def issuer(self) -> str:
        """The fingerprint of the root that signed the current leaf."""
        return self.roots[identity.load_certificates(self.certs.credentials[self.me].chain_pem)[0].issuer]

    def trusts(self) -> set[str]:
        return {fingerprint(c) for c in identity.load_certificates(self.certs.credentials[self.me].bundle_pem)}

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self.listener.close()
        await self.sign_client.close()


def test_the_root_rotates_twice_while_a_connection_stays_open_and_new_ones_keep_working(tmp_path):
    now = [dt.datetime.now(dt.timezone.utc)]
    clock = lambda: now[0]   # noqa: E731
    ca_dir = tmp_path / "ca"
    bundle_file = ca_dir / "bundle.pem"
    store = ca_store.FileRootStore(ca_dir)
    authority = CertificateAuthority(ca_store.load_or_create(store, TD, now[0]), trust_domain=TD,
                                     leaf_ttl=LEAF_TTL, clock=clock, rotation_margin=MARGIN)
    keeper = RootKeeper(store, authority, lambda pem: publish_bundle(bundle_file, pem))
    keeper.step()
    overlap = authority.overlap
    roots_by_subject = {authority.signer.cert.subject: authority.signer.fingerprint}

    def file_holds() -> set[str]:
        return {fingerprint(c) for c in identity.load_certificates(bundle_file.read_bytes())}

    async def main():
        workloads = [workload(1, node="node1", sa="alice"), workload(2, node="node2", sa="bob")]
        async with running_plane(tmp_path / "plane", workloads, authority=authority) as plane:
            alice = Proxy(plane, "node1", ALICE, bundle_file, clock, roots_by_subject)
            bob = Proxy(plane, "node2", BOB, bundle_file, clock, roots_by_subject)
            await alice.start()
            await bob.start()
            steady = await alice.tunnel_to(bob)          # stays open for the whole test
            await steady.round_trip(b"hello before any rotation")

            async def both_ways(label: str) -> None:
                for client, server in ((alice, bob), (bob, alice)):
                    tunnel = await client.tunnel_to(server)
                    await tunnel.round_trip(f"{label}: {client.me.service_account} to "
                                            f"{server.me.service_account}".encode())
                    tunnel.session.close()
                await steady.round_trip(f"{label}: on the connection opened first".encode())
                assert not alice.handshakes_failed and not bob.handshakes_failed

            async def move_to(when: dt.datetime) -> None:
                while now[0] < when:
                    now[0] = min(when, now[0] + STEP)
                    await asyncio.to_thread(keeper.step)
                    await alice.renew()
                    await bob.renew()

            first_old = first_old_leaves = None
            for round_ in (1, 2):
                old = authority.signer.fingerprint
                began = now[0]
                incoming = ca_store.begin_rotation(store, TD, began).incoming    # `--rotate-ca`
                new = incoming.fingerprint
                roots_by_subject[incoming.cert.subject] = new
                assert {old, new} <= file_holds()                     # trusted on disk at once
                await asyncio.to_thread(keeper.step)

                # Renewals never fall together: alice renews first, bob still holds his earlier leaf.
                await alice.renew()
                assert {old, new} <= alice.trusts() and alice.issuer() == old
                await both_ways(f"round {round_}, new root trusted, alice renewed")
                await bob.renew()
                assert {old, new} <= bob.trusts() and bob.issuer() == old
                await both_ways(f"round {round_}, new root trusted, both renewed")

                # Up to the switch the old root signs; at it, alice renews first: old and new leaves meet.
                await move_to(began + overlap - dt.timedelta(seconds=1))
                assert alice.issuer() == bob.issuer() == old
                now[0] = began + overlap
                await asyncio.to_thread(keeper.step)
                await alice.renew()
                assert alice.issuer() == new and bob.issuer() == old
                await both_ways(f"round {round_}, alice on the new root, bob on the old")
                await bob.renew()
                assert bob.issuer() == new
                await both_ways(f"round {round_}, both on the new root")
                assert store.load().signer.fingerprint == new

                if round_ == 1:
                    # The next rotation begins at once, while the first old root still retires.
                    first_old, first_old_leaves = old, began + 2 * overlap
                    await move_to(now[0] + dt.timedelta(seconds=2))
                    continue
                # The first old root left when its last leaf expired; this round's old root leaves now.
                assert now[0] >= first_old_leaves and first_old not in file_holds()
                await move_to(began + 2 * overlap - dt.timedelta(seconds=1))
                assert old in file_holds()
                await move_to(began + 2 * overlap)
                assert file_holds() == {new}
                assert alice.trusts() == bob.trusts() == {new}          # renewed: the new bundle only
                await both_ways("after both rotations")
            # The connection opened first carries a new stream too.
            late = Tunnel(steady.session, await steady.session.open("127.0.0.1:8080", timeout=5))
            await late.round_trip(b"a new stream on the first connection")
            assert alice.bundle.generation >= 5      # the proxies re-read the bundle file as it changed
            steady.session.close()
            await alice.close()
            await bob.close()

    asyncio.run(main())
