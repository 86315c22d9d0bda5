"""Freed heap goes back to the OS after a burst (glibc), so RSS does not stay at the peak."""

from __future__ import annotations

import platform
import resource

import numpy as np
import pytest

from daemon import heap


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_release_returns_fragmented_heap_to_the_os() -> None:
    # Mid-sized arrays (below glibc's mmap threshold) each followed by a small survivor:
    # freeing the arrays leaves holes the heap cannot shrink past, until trimmed.
    big: list[np.ndarray] = []
    pins: list[np.ndarray] = []
    for _ in range(6_000):
        big.append(np.ones(4_000))  # 32 KB
        pins.append(np.ones(64))
    del big
    before = _rss_bytes()
    assert heap.release() is True
    after = _rss_bytes()
    assert after < before - 100 * 2**20, (before, after)
    assert len(pins) == 6_000
