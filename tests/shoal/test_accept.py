"""Accept loops go on through EMFILE: the proxy keeps accepting once descriptors are free again."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from shoal import lifecycle

SCRIPT = textwrap.dedent("""
    import asyncio, os, resource, socket, sys
    from shoal import sockets

    async def main():
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        accepted = []
        clients = []
        for _ in range(3):
            c = socket.socket()
            c.setblocking(False)
            try:
                c.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            clients.append(c)
        # One descriptor left: the first accept takes it, the others fail with EMFILE.
        in_use = len(os.listdir("/proc/self/fd")) - 1      # listdir's own descriptor
        resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        loop_task = asyncio.ensure_future(sockets.accept_forever(listener, lambda c, a: accepted.append(c)))
        await asyncio.sleep(0.5)
        stalled = len(accepted)
        resource.setrlimit(resource.RLIMIT_NOFILE, (4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        for _ in range(200):
            if len(accepted) == len(clients):
                break
            await asyncio.sleep(0.02)
        print(stalled, len(accepted), loop_task.done())

    asyncio.run(main())
""")


def test_an_accept_loop_survives_running_out_of_descriptors():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    stalled, accepted, ended = result.stdout.strip().splitlines()[-1].split()
    assert int(stalled) < 3                         # the limit did bite: some accepts failed with EMFILE
    assert "accept failed; pausing" in result.stderr or "accept failed; pausing" in result.stdout
    assert int(accepted) == 3 and ended == "False"  # and every connection was accepted once it could be


def test_processes_raise_their_file_limit():
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
        assert lifecycle.raise_file_limit() == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
