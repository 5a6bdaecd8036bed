"""shoal.file_events: inotify wakes a watcher for the files it names, and a poll stands in where it cannot."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time

import pytest

from shoal import file_events
from shoal.file_events import DirectoryChanges


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


def test_an_async_wait_returns_on_a_write_and_leaves_no_reader_behind(tmp_path, changes):
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
        assert loop.remove_reader(changes.fd) is False  # every wait took its reader off the loop

    asyncio.run(main())


def test_without_inotify_the_waits_poll_and_say_so_once(tmp_path, monkeypatch):
    def no_inotify():
        raise AttributeError("inotify_init1")
    monkeypatch.setattr(file_events, "_libc", no_inotify)
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

    def churn():  # for 2 s at most, so that a wait that the churn stretches ends (and fails) too
        until = time.monotonic() + 2
        while not stop.is_set() and time.monotonic() < until:
            (tmp_path / "rv").write_text("1")
            stop.wait(0.01)
    writer = threading.Thread(target=churn)
    writer.start()
    try:
        started = time.monotonic()
        changes.wait(0.2)
        assert time.monotonic() - started < 0.5
    finally:
        stop.set()
        writer.join()
