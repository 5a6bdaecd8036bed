"""Waiting for a file in a directory to change, with the kernel's inotify.

The local cluster's store is watched by every component of a cluster (the
control plane, the node agents, the kubelet). Polling its journal every few
milliseconds kept each of them awake 50 times a second with nothing to do;
Kubernetes pushes watch events, and inotify lets the store push too: a
watcher sleeps until the kernel says the journal was written or replaced.

`DirectoryChanges(directory, names)` watches `directory` (not recursively)
for writes, creations, renames onto and removals of the files called `names`,
and for the directory itself going away. Its waits (`wait` blocking,
`wait_async` on the asyncio loop) return on such a change or at the timeout;
a caller then looks at the files itself, so a wake-up with nothing new costs
one look and nothing is lost: the watch is armed in the constructor, before
the caller's first look.

A process has one inotify instance, whatever its number of watches (the
kernel allows a user 128 instances, `fs.inotify.max_user_instances`, and a
local cluster runs more watchers than that). Each directory has one kernel
watch in it, shared by the `DirectoryChanges` on that directory and removed
with the last of them. A thread of the instance's own sleeps on its fd and
hands each event to the watchers of its directory; it ends, and the fd is
closed, when the last watch is closed. `drain` also reads what is queued, so
it sees a change made just before it is called.

Where inotify cannot be had (no libc symbol, no instance or watch left), the
waits sleep `POLL_SECONDS` instead, and the first such fallback in a process
is logged with the reason.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import select
import struct
import threading
import time
from pathlib import Path

from shoal import log

logger = log.get("shoal.file_events")

POLL_SECONDS = 0.02  # the fallback's period, what every watcher used to poll at

IN_MODIFY = 0x00000002
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
_WATCH_MASK = IN_MODIFY | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF
_SELF_GONE = IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED
_EVENT_HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)

_fallback_logged = False
# Guards the instance, its watch table and every watcher's state. Reentrant: a watch dropped without being
# closed (a `Store.watch` generator in a cycle) is closed by the collector, which may run while this thread
# holds the lock, in the middle of `read`.
_lock = threading.RLock()
_instance: "_Inotify | None" = None


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.inotify_init1, libc.inotify_add_watch, libc.inotify_rm_watch


def _fall_back(reason: str) -> None:
    global _fallback_logged
    if not _fallback_logged:
        _fallback_logged = True
        logger.warning("inotify unavailable; store watchers poll instead", reason=reason,
                       check="fs.inotify.max_user_instances and max_user_watches, or a kernel built with inotify")


class _Inotify:
    """The process's inotify instance: kernel watches by wd, each with the watchers it wakes."""

    def __init__(self) -> None:
        init1, self._add_watch, self._rm_watch = _libc()
        fd = init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        try:
            self._stop_read, self._stop_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            os.close(fd)
            raise
        self.fd = fd
        self.closed = False      # stopped, or inherited through a fork: its fd numbers are not its own any more
        self._thread_closes = False
        self.watchers: dict[int, set[DirectoryChanges]] = {}
        self._thread = threading.Thread(target=self._run, name="shoal-inotify", daemon=True)
        self._thread.start()

    def add(self, watcher: "DirectoryChanges") -> int:
        """The wd of `watcher`'s directory (the kernel gives a watched directory's wd again); -errno on failure."""
        wd = self._add_watch(self.fd, os.fsencode(watcher.directory), _WATCH_MASK)
        if wd < 0:
            return -ctypes.get_errno()
        self.watchers.setdefault(wd, set()).add(watcher)
        return wd

    def remove(self, watcher: "DirectoryChanges", wd: int) -> None:
        sharing = self.watchers.get(wd)
        if self.closed or sharing is None or watcher not in sharing:
            return                   # its directory went away: the kernel dropped the watch already
        sharing.discard(watcher)
        if not sharing:
            del self.watchers[wd]
            self._rm_watch(self.fd, wd)

    def read(self) -> None:
        """Reads every queued event and hands it to the watchers it concerns."""
        while not self.closed:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            offset = 0
            while offset < len(data):
                wd, mask, _cookie, length = _EVENT_HEADER.unpack_from(data, offset)
                name = data[offset + _EVENT_HEADER.size: offset + _EVENT_HEADER.size + length].rstrip(b"\0")
                offset += _EVENT_HEADER.size + length
                if mask & IN_Q_OVERFLOW:     # events were lost: every watcher looks
                    for sharing in list(self.watchers.values()):
                        for watcher in list(sharing):
                            watcher._changed()
                    continue
                sharing = list(self.watchers.get(wd, ()))
                if mask & _SELF_GONE:
                    self.watchers.pop(wd, None)
                    if not mask & IN_IGNORED and not self.closed:
                        self._rm_watch(self.fd, wd)   # moved away: what it watches is not the directory any more
                for watcher in sharing:
                    if mask & _SELF_GONE:
                        watcher.gone = True
                    if mask & _SELF_GONE or name in watcher.names:
                        watcher._changed()

    def stop(self) -> None:
        """Ends the thread and closes the fds once it has ended (it polls them); `closed` is set already.
        Called in the thread itself (the collector closing the last watch during its `read`), it leaves the
        closing to the thread, which ends its loop on `closed`."""
        if threading.current_thread() is self._thread:
            self._thread_closes = True
            return
        os.write(self._stop_write, b"x")
        self._thread.join()
        self._close_fds()

    def _close_fds(self) -> None:
        for fd in (self.fd, self._stop_read, self._stop_write):
            os.close(fd)

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        poller.register(self._stop_read, select.POLLIN)
        while self._stop_read not in {fd for fd, _ in poller.poll()} and self._read_when_free():
            pass
        if self._thread_closes:
            self._close_fds()

    def _read_when_free(self) -> bool:
        """`read` under the lock; False once stopped. The lock is waited for in short turns: whoever holds it
        may be stopping this thread and waiting for it to end (the collector closing the last watch)."""
        while not _lock.acquire(timeout=0.05):
            if self.closed:
                return False
        try:
            self.read()
            return not self.closed
        finally:
            _lock.release()


def _unused_instance() -> "_Inotify | None":
    """Under the lock: the instance, taken out of use, if no watch is left in it (to be stopped outside)."""
    global _instance
    unused = _instance
    if unused is None or unused.watchers:
        return None
    unused.closed, _instance = True, None
    return unused


def _forget_after_fork() -> None:
    """A child has the parent's fds but not its thread: it starts afresh (and closes what it inherited)."""
    global _lock, _instance
    _lock = threading.RLock()
    inherited, _instance = _instance, None
    if inherited is not None and not inherited.closed:
        inherited.closed = True
        for fd in (inherited.fd, inherited._stop_read, inherited._stop_write):
            os.close(fd)


os.register_at_fork(after_in_child=_forget_after_fork)


class DirectoryChanges:
    """A watch on one directory for changes to some of its files, in the process's inotify instance."""

    def __init__(self, directory: Path, names: frozenset[str] | set[str]) -> None:
        global _instance
        self.directory = Path(directory)
        self.names = frozenset(n.encode() for n in names)
        self.gone = False  # the directory went away, and the kernel's watch with it
        self._instance: _Inotify | None = None
        self._wd = -1
        self._pending = False  # a change not yet reported by a wait or drain
        self._woken = threading.Event()
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future] | None = None
        with _lock:
            if _instance is None:
                try:
                    _instance = _Inotify()
                except (OSError, AttributeError) as e:
                    _fall_back(f"no inotify: {e}")
                    return
            wd = _instance.add(self)
            if wd >= 0:
                self._instance, self._wd = _instance, wd
            elif -wd != errno.ENOENT:  # a directory that is not there: the caller's first look says so
                _fall_back(f"watching {self.directory}: {os.strerror(-wd)}")
            unused = _unused_instance()
        if unused is not None:
            unused.stop()

    @property
    def polling(self) -> bool:
        return self._instance is None or self._instance.closed or self.gone

    def close(self) -> None:
        """Lets the watch go; the last watch of the process takes the instance, its fd and thread along."""
        with _lock:
            if self._instance is not None:
                self._instance.remove(self, self._wd)
                self._instance = None
            unused = _unused_instance()
        if unused is not None:
            unused.stop()

    def __enter__(self) -> "DirectoryChanges":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _changed(self) -> None:
        """Called under the lock, from whichever thread read the event."""
        self._pending = True
        self._woken.set()
        if self._waiter is not None:
            loop, woken = self._waiter
            try:
                loop.call_soon_threadsafe(_resolve, woken)
            except RuntimeError:
                pass  # its loop is closed: nobody waits any more

    def drain(self) -> bool:
        """True when one of the files or the directory changed since the last wait or drain.

        Once the directory is gone the watch is too: from then on the waits poll, so a caller
        that waits again (a directory made anew under the same name) is woken on time to look."""
        with _lock:
            if self._instance is not None:
                self._instance.read()
            changed, self._pending = self._pending, False
            self._woken.clear()
        return changed

    def wait(self, timeout: float | None) -> None:
        """Blocks until a change (or the timeout, None for none)."""
        if self.polling:
            time.sleep(POLL_SECONDS if timeout is None else min(timeout, POLL_SECONDS))
            return
        if not self.drain():
            self._woken.wait(timeout)  # (other files' changes do not wake it, nor start the timeout again)
            self.drain()

    async def wait_async(self, timeout: float | None) -> None:
        """`wait` on the running loop: nothing runs in it while nothing changes."""
        if self.polling:
            await asyncio.sleep(POLL_SECONDS if timeout is None else min(timeout, POLL_SECONDS))
            return
        if self.drain():
            return
        loop = asyncio.get_running_loop()
        woken = loop.create_future()
        with _lock:
            self._waiter = (loop, woken)
            if self._pending:
                woken.set_result(None)
        try:
            await asyncio.wait_for(woken, timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            with _lock:
                self._waiter = None
            self.drain()


def _resolve(woken: asyncio.Future) -> None:
    if not woken.done():
        woken.set_result(None)
