#!/usr/bin/env python3
"""What a first backup costs the page cache, and what uncached reads cost it: two bakare
binaries, interleaved (A, B, A, B, ...), on a corpus on a disk file system (not tmpfs, which
takes no uncached reads).

    bench/scripts/page-cache.py OLD_BIN NEW_BIN CORPUS ROUNDS

Each run backs CORPUS up into a fresh repository (--no-cache: every file is read) twice per
round and binary: cold (every corpus file's pages dropped first with POSIX_FADV_DONTNEED; the
files are clean, so that empties them from the cache) and warm (every file read first). It
prints wall seconds, and the corpus's bytes in the page cache after the run (fincore), which
is what the backup left there: the cold runs show what a backup adds to the cache, the warm
runs whether it keeps what was there.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time


def corpus_files(root):
    for d, _, files in os.walk(root):
        for f in files:
            yield os.path.join(d, f)


def evict(files):
    for p in files:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm(files):
    for p in files:
        with open(p, "rb") as f:
            while f.read(1 << 20):
                pass


def resident(files):
    """Bytes of `files` in the page cache (fincore, a few thousand files per call)."""
    total = 0
    for i in range(0, len(files), 2000):
        out = subprocess.run(
            ["fincore", "--bytes", "--noheadings", "--output", "RES", *files[i:i + 2000]],
            check=True, capture_output=True, text=True).stdout
        total += sum(int(x) for x in out.split())
    return total


def run(binary, corpus):
    repo = tempfile.mkdtemp(prefix="pc-repo-", dir="/dev/shm")
    home = tempfile.mkdtemp(prefix="pc-home-", dir="/dev/shm")
    env = dict(os.environ, HOME=home)
    try:
        subprocess.run([binary, "--repo", repo, "init"], check=True, env=env, capture_output=True)
        t = time.monotonic()
        subprocess.run([binary, "--repo", repo, "run", "--no-cache", corpus], check=True, env=env,
                       capture_output=True)
        return time.monotonic() - t
    finally:
        shutil.rmtree(repo, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)


def main():
    old, new, corpus, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    files = sorted(corpus_files(corpus))
    size = sum(os.path.getsize(p) for p in files)
    print(f"corpus {corpus}: {len(files)} files, {size / 2**20:.0f} MiB")
    for _ in range(rounds):
        for name, binary in (("old", old), ("new", new)):
            evict(files)
            before = resident(files)
            secs = run(binary, corpus)
            after = resident(files)
            print(f"{name} cold {secs:.2f} s, cached before {before / 2**20:.0f} MiB, after {after / 2**20:.0f} MiB")
            warm(files)
            before = resident(files)
            secs = run(binary, corpus)
            after = resident(files)
            print(f"{name} warm {secs:.2f} s, cached before {before / 2**20:.0f} MiB, after {after / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
