"""shoal.proxy_process: freed memory goes back to the kernel (the proxies' memory after a burst)."""

from __future__ import annotations

import pytest

from shoal import proxy_process


def rss_anon_kib() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise AssertionError("no RssAnon in /proc/self/status")


@pytest.mark.skipif(proxy_process._glibc() is None, reason="malloc_trim and mallinfo2 are glibc's (2.33 on)")
def test_freed_buffers_below_a_live_one_are_given_back():
    # 40 MiB in 64 KiB buffers (below glibc's mmap threshold: they come from the heap), then one small live
    # object above them, so the heap's top cannot shrink when they are freed.
    buffers = [bytearray(64 * 1024) for _ in range(640)]
    for b in buffers:
        b[::4096] = b"x" * len(b[::4096])       # touch every page
    pin = bytearray(2000)
    held = rss_anon_kib()
    del buffers
    freed = rss_anon_kib()
    assert proxy_process.free_heap_bytes() > 30 * 1024 * 1024
    assert proxy_process.trim_if_worth_it() is True
    trimmed = rss_anon_kib()
    assert held - freed < 10 * 1024, "glibc gave the pages back on its own; the trim is not what is tested"
    assert freed - trimmed > 30 * 1024, (held, freed, trimmed)
    # Below the threshold nothing is done (malloc still counts the trimmed pages as free: they are).
    assert proxy_process.trim_if_worth_it(threshold=proxy_process.free_heap_bytes() + 1) is False
    del pin
