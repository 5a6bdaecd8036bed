"""The hand-off during a ztunnel upgrade: the newest ztunnel holds it, an older one is turned away.

Two real processes: this test process plays the old ztunnel (it started first), a child
process plays the new one. Without the rule, the old one's reconnection takes the hand-off
back from the new one, and the two take it from each other in turn.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap

from shoal.handoff import ZtunnelGreeted
from shoal.handoff_io import HandoffClient, HandoffServer, process_start

from support.polling import eventually_async

NEW_ZTUNNEL = textwrap.dedent("""
    import asyncio, sys
    from shoal.handoff_io import HandoffClient

    class Handler:
        async def add_workload(self, workload, netns_fd):
            return None
        async def del_workload(self, uid):
            pass

    async def main():
        client = HandoffClient(sys.argv[1], Handler(), retry_seconds=0.02, max_retry_seconds=0.05)
        task = asyncio.create_task(client.run())
        await client.synced.wait()
        print("synced", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        client.stop()
        await task

    asyncio.run(main())
""")


class Handler:
    async def add_workload(self, workload, netns_fd):
        return None

    async def del_workload(self, uid):
        pass


def test_process_start_orders_processes_and_is_none_for_no_process():
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.readline()"], stdin=subprocess.PIPE)
    try:
        assert process_start(os.getpid()) <= process_start(child.pid)
    finally:
        child.communicate(b"\n", timeout=10)
    assert process_start(None) is None
    assert process_start(child.pid) is None        # reaped: no such process


def test_the_newest_ztunnel_keeps_the_hand_off_while_an_older_one_keeps_reconnecting(tmp_path):
    async def main():
        greeted: list[int] = []

        def on_event(event, server):
            if isinstance(event, ZtunnelGreeted):
                greeted.append(server.peer_pid)

        server = HandoffServer(tmp_path / "ztunnel.sock", lambda: [], on_event)
        await server.start()
        old = HandoffClient(server.path, Handler(), retry_seconds=0.02, max_retry_seconds=0.05)
        old_task = asyncio.create_task(old.run())
        new = None
        try:
            await asyncio.wait_for(old.synced.wait(), 10)
            assert greeted == [os.getpid()]
            new = await asyncio.create_subprocess_exec(
                sys.executable, "-c", NEW_ZTUNNEL, str(server.path), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
            assert (await asyncio.wait_for(new.stdout.readline(), 60)).strip() == b"synced"
            assert server.peer_pid == new.pid

            # The old one lost its connection and tries again every few hundredths of a second.
            await eventually_async(lambda: not old.connected.is_set(), 10, "the old ztunnel to lose the hand-off")
            await asyncio.sleep(1.0)               # room for many reconnections (not a claim about speed)
            assert server.peer_pid == new.pid
            assert greeted == [os.getpid(), new.pid], greeted

            # Once the new one is gone, the old one (still running) is served again.
            new.stdin.write(b"\n")
            await new.stdin.drain()
            await asyncio.wait_for(new.wait(), 30)
            await asyncio.wait_for(old.synced.wait(), 10)
            assert server.peer_pid == os.getpid()
        finally:
            if new is not None and new.returncode is None:
                new.kill()
                await new.wait()
            old.stop()
            await asyncio.wait_for(old_task, 5)
            await server.close()

    asyncio.run(main())
