#!/usr/bin/env bash
# Restore timings of two bakare binaries, interleaved (A, B, A, B, ...), from one repository:
#   bench/scripts/restore-ab.sh CORPUS RUNS OLD_BIN NEW_BIN
# The repository is made once from CORPUS with NEW_BIN (the format is the same for both) in
# /dev/shm, and each restore goes to an emptied /dev/shm/ab-target. Prints wall seconds and peak
# RSS (GNU time) per run. With SEPARATE=1 each binary restores from a repository it made
# itself (for binaries whose repository formats differ).
set -euo pipefail
corpus=$1; runs=$2; old=$3; new=$4
export HOME=/dev/shm/ab-home; mkdir -p "$HOME"
repo_of() {
    if [ "${SEPARATE:-0}" = 1 ]; then echo "/dev/shm/ab-repo-$(basename "$corpus")-$1"; else echo "/dev/shm/ab-repo-$(basename "$corpus")"; fi
}
makers=new; [ "${SEPARATE:-0}" = 1 ] && makers="old new"
for which in $makers; do
    bin=$old; [ "$which" = new ] && bin=$new
    repo=$(repo_of "$which")
    if [ ! -d "$repo" ]; then
        "$bin" --repo "$repo" init >/dev/null
        "$bin" --repo "$repo" run "$corpus" --no-cache >/dev/null
    fi
done
for _ in $(seq "$runs"); do
    for which in old new; do
        bin=$old; [ "$which" = new ] && bin=$new
        rm -rf /dev/shm/ab-target
        /usr/bin/time -f "$which %e s %M KiB" "$bin" --repo "$(repo_of "$which")" restore latest --target /dev/shm/ab-target >/dev/null
    done
done
