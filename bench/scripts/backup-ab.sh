#!/usr/bin/env bash
# First-backup and no-change-run timings of two bakare binaries, interleaved (A, B, A, B, ...):
#   bench/scripts/backup-ab.sh CORPUS RUNS OLD_BIN NEW_BIN
# Each run makes a fresh repository in /dev/shm with its own binary (the formats may differ),
# backs CORPUS up once (first backup: everything is read, chunked, compressed, sealed) and again
# (no change: the files cache answers). Prints wall seconds and peak RSS (GNU time) per step.
# Fair to both: same corpus, same tmpfs, same defaults; the page cache is warm for both.
set -euo pipefail
corpus=$1; runs=$2; old=$3; new=$4
for _ in $(seq "$runs"); do
    for which in old new; do
        bin=$old; [ "$which" = new ] && bin=$new
        export HOME=/dev/shm/ab-home-$which
        rm -rf "$HOME" /dev/shm/ab-repo; mkdir -p "$HOME"
        "$bin" --repo /dev/shm/ab-repo init >/dev/null
        /usr/bin/time -f "$which first %e s %M KiB" "$bin" --repo /dev/shm/ab-repo run "$corpus" >/dev/null
        /usr/bin/time -f "$which nochange %e s %M KiB" "$bin" --repo /dev/shm/ab-repo run "$corpus" >/dev/null
    done
done
