"""shoal.file_events: inotify wakes a watcher for the files it names, and a poll stands in where it cannot."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading

import pytest

from shoal import file_events
from shoal.file_events import DirectoryChanges
from support.polling import eventually


@pytest.fixture
def changes(tmp_path):
    with DirectoryChanges(tmp_path, {"journal.jsonl"}) as watched:
        assert not watched.polling, "inotify should be available on a Linux test machine"
        yield watched


def test_a_write_to_a_named_file_is_a_change_and_one_to_another_file_is_not(tmp_path, changes):
    (tmp_path / "rv").write_text("1")
    assert changes.drain() is False
    with open(tmp_path / "journal.jsonl", "a") as journal:
        journal.write("{}\n")
    assert changes.drain() is True
    assert changes.drain() is False  # read once


def test_a_file_renamed_onto_a_named_one_is_a_change(tmp_path, changes):
    (tmp_path / "journal.tmp").write_text("{}\n")
    assert changes.drain() is False
    os.replace(tmp_path / "journal.tmp", tmp_path / "journal.jsonl")
    assert changes.drain() is True


def test_the_directory_going_away_wakes_the_watcher_and_later_waits_poll(tmp_path):
    directory = tmp_path / "store"
    directory.mkdir()
    with DirectoryChanges(directory, {"journal.jsonl"}) as watched:
        shutil.rmtree(directory)
        watched.wait(None)  # returns: the directory's removal is a change
        assert watched.gone and watched.polling
        watched.wait(None)  # a poll's sleep now, not a wait for a watch the kernel dropped


def test_a_blocking_wait_returns_on_a_write_from_another_thread(tmp_path, changes):
    writer = threading.Timer(0.05, lambda: (tmp_path / "journal.jsonl").write_text("{}\n"))
    writer.start()
    changes.wait(None)
    writer.join()
    assert (tmp_path / "journal.jsonl").exists()


def test_an_async_wait_returns_on_a_write_and_leaves_no_waiter_behind(tmp_path, changes):
    async def main():
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, (tmp_path / "journal.jsonl").write_text, "{}\n")
        await changes.wait_async(None)
        await changes.wait_async(0.01)  # nothing more: the timeout ends it
        waiting = asyncio.create_task(changes.wait_async(None))
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert changes._waiter is None  # every wait took itself off the watch

    asyncio.run(main())


def test_without_inotify_the_waits_poll_and_say_so_once(tmp_path, monkeypatch):
    def no_inotify():
        raise AttributeError("inotify_init1")
    monkeypatch.setattr(file_events, "_libc", no_inotify)
    monkeypatch.setattr(file_events, "_instance", None)    # (another test's watch may hold one open)
    monkeypatch.setattr(file_events, "_fallback_logged", False)
    warnings = []
    monkeypatch.setattr(file_events.logger, "warning", lambda message, **kw: warnings.append((message, kw)))
    first, second = DirectoryChanges(tmp_path, {"journal.jsonl"}), DirectoryChanges(tmp_path, {"journal.jsonl"})
    assert first.polling and second.polling
    first.wait(None)
    asyncio.run(second.wait_async(None))
    assert len(warnings) == 1 and "inotify_init1" in warnings[0][1]["reason"]


def test_changes_to_other_files_do_not_stretch_a_blocking_wait_past_its_timeout(tmp_path, changes):
    stop = threading.Event()

    def churn():  # until told to stop: a wait that each of these changes started again would never end
        while not stop.is_set():
            (tmp_path / "rv").write_text("1")
            stop.wait(0.01)
    writer = threading.Thread(target=churn)
    waiter = threading.Thread(target=changes.wait, args=(0.2,), daemon=True)
    writer.start()
    try:
        waiter.start()
        waiter.join(10)
        assert not waiter.is_alive(), "the wait went on for as long as other files changed"
    finally:
        stop.set()
        writer.join()


def inotify_fds() -> dict[int, int]:
    """This process's inotify fds, each with the number of kernel watches in it."""
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify":
                with open(f"/proc/self/fdinfo/{fd}") as info:
                    found[int(fd)] = sum(line.startswith("inotify wd:") for line in info)
        except OSError:
            continue     # the fd of the listing itself, gone
    return found


def kernel_watches() -> int:
    """Kernel watches in the process's inotify instance (0 while it has none). Other tests' watches, if any
    are still open, share it: the tests count from what was there."""
    instance = file_events._instance
    return inotify_fds().get(instance.fd, 0) if instance is not None else 0


def directories(tmp_path, *names: str):
    made = [tmp_path / name for name in names]
    for directory in made:
        directory.mkdir()
    return made


def nothing_left_if_nothing_was(before: int) -> bool:
    """With no other watch in the process, the last one closed took the instance, its fd and thread along."""
    threads = [t for t in threading.enumerate() if t.name == "shoal-inotify"]
    return before > 0 or (file_events._instance is None and not inotify_fds() and not threads)


def test_many_watches_share_one_instance_and_each_is_woken_for_its_own_directory(tmp_path):
    before = kernel_watches()
    directories = [tmp_path / f"d{i}" for i in range(200)]     # more than the 128 instances a user may have
    for directory in directories:
        directory.mkdir()
    watches = [DirectoryChanges(d, {"journal.jsonl"}) for d in directories]
    try:
        assert not any(w.polling for w in watches)
        assert {w._instance for w in watches} == {file_events._instance}
        assert kernel_watches() == before + 200
        (directories[150] / "journal.jsonl").write_text("{}\n")
        watches[150].wait(None)
        assert [i for i, w in enumerate(watches) if w.drain()] == []     # the wait took the one change
        (directories[7] / "journal.jsonl").write_text("{}\n")
        assert [i for i, w in enumerate(watches) if w.drain()] == [7]
    finally:
        for w in watches:
            w.close()
    assert kernel_watches() == before and nothing_left_if_nothing_was(before)


def test_a_watch_closed_while_others_live_leaves_them_woken(tmp_path):
    shared, other = directories(tmp_path, "shared", "other")
    before = kernel_watches()
    first, second = DirectoryChanges(shared, {"journal.jsonl"}), DirectoryChanges(shared, {"journal.jsonl"})
    third = DirectoryChanges(other, {"journal.jsonl"})
    try:
        assert kernel_watches() == before + 2      # one kernel watch per directory, whatever the watchers on it
        first.close()
        assert kernel_watches() == before + 2      # the directory's watch stays for the other watcher on it
        (shared / "journal.jsonl").write_text("{}\n")
        (other / "journal.jsonl").write_text("{}\n")
        assert second.drain() and third.drain() and not first.drain()
        second.close()
        assert kernel_watches() == before + 1      # the last watcher of a directory takes its kernel watch along
        waiter = threading.Timer(0.05, lambda: (other / "journal.jsonl").write_text("{}\n"))
        waiter.start()
        third.wait(None)
        waiter.join()
    finally:
        for w in (first, second, third):
            w.close()
    assert kernel_watches() == before and nothing_left_if_nothing_was(before)


def test_a_removed_directory_ends_its_watch_and_not_the_others(tmp_path):
    doomed, kept = directories(tmp_path, "doomed", "kept")
    before = kernel_watches()
    with DirectoryChanges(doomed, {"journal.jsonl"}) as gone, DirectoryChanges(kept, {"journal.jsonl"}) as live:
        shutil.rmtree(doomed)
        gone.wait(None)
        assert gone.gone and gone.polling and not live.polling
        eventually(lambda: kernel_watches() == before + 1, what="the kernel to drop the removed one's watch")

        async def woken():
            loop = asyncio.get_running_loop()
            loop.call_later(0.05, (kept / "journal.jsonl").write_text, "{}\n")
            await live.wait_async(None)
        asyncio.run(woken())
    assert kernel_watches() == before and nothing_left_if_nothing_was(before)


def test_a_watch_closed_while_its_thread_holds_the_lock_does_not_deadlock(tmp_path):
    """As the collector does, closing a dropped watch in the middle of whatever the thread was doing."""
    before = kernel_watches()
    watch = DirectoryChanges(tmp_path, {"journal.jsonl"})

    def close_under_the_lock():
        with file_events._lock:
            watch.close()
    closer = threading.Thread(target=close_under_the_lock, daemon=True)
    closer.start()
    closer.join(10)
    assert not closer.is_alive(), "close() waited for a lock its own thread held"
    assert kernel_watches() == before and nothing_left_if_nothing_was(before)
