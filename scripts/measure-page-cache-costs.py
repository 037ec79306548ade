#!/usr/bin/env python3
"""The kernel's CPU cost of the RAM tier's advice, on a file of your own (the big model file of
scripts/bench-larger-than-ram.sh, say), 1 GiB at a time: MADV_WILLNEED in 128 KiB calls (as
page_cache.rs gives it) on a cold range, MADV_PAGEOUT of a mapped resident range, and
MADV_DONTNEED + posix_fadvise(DONTNEED) for comparison. Prints wall and kernel (sys) seconds of
this process for each (os.times). Linux only; the file must be at least 3 GiB.

    python3 scripts/measure-page-cache-costs.py /tmp/synapswap-big/model.safetensors
"""

import mmap
import os
import sys
import time

G = 1 << 30
MADV_PAGEOUT = 21


def timed(label, fn):
    a, w = os.times(), time.time()
    fn()
    b = os.times()
    print(f"{label}: wall {time.time() - w:.3f} s, kernel {b.system - a.system:.2f} s, "
          f"user {b.user - a.user:.2f} s")


def main():
    path = sys.argv[1]
    f = open(path, "rb")
    m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    if len(m) < 3 * G:
        sys.exit(f"{path}: needs at least 3 GiB")
    off = (len(m) - 3 * G) // mmap.PAGESIZE * mmap.PAGESIZE
    os.posix_fadvise(f.fileno(), off, 3 * G, os.POSIX_FADV_DONTNEED)

    def willneed(at):
        for o in range(at, at + G, 128 << 10):
            m.madvise(mmap.MADV_WILLNEED, o, 128 << 10)

    def touch(at):
        for o in range(at, at + G, mmap.PAGESIZE):
            m[o]

    timed("MADV_WILLNEED, 128 KiB calls, 1 GiB cold", lambda: willneed(off))
    timed("  then touching every page", lambda: touch(off))
    timed("MADV_PAGEOUT of that 1 GiB (mapped, resident)", lambda: m.madvise(MADV_PAGEOUT, off, G))
    willneed(off + G)
    touch(off + G)
    timed("MADV_DONTNEED of 1 GiB (mapped, resident)", lambda: m.madvise(mmap.MADV_DONTNEED, off + G, G))
    timed("  then posix_fadvise(DONTNEED) of it",
          lambda: os.posix_fadvise(f.fileno(), off + G, G, os.POSIX_FADV_DONTNEED))


if __name__ == "__main__":
    main()
