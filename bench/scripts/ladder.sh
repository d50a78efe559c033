#!/usr/bin/env bash
# First backup + no-change run of each binary in turn, interleaved, RUNS rounds:
#   bench/scripts/ladder.sh CORPUS RUNS BIN...
# Each run makes a fresh repository in /dev/shm (formats may differ) and prints
# "<binary> first|nochange <wall s> <user s> <system s>" (GNU time).
set -euo pipefail
corpus=$1; runs=$2; shift 2
for _ in $(seq "$runs"); do
  for bin in "$@"; do
    n=$(basename "$bin"); export HOME=/dev/shm/ab-home-$n
    rm -rf "$HOME" /dev/shm/ab-repo; mkdir -p "$HOME"
    "$bin" --repo /dev/shm/ab-repo init >/dev/null
    /usr/bin/time -f "$n first %e %U %S" "$bin" --repo /dev/shm/ab-repo run "$corpus" >/dev/null
    /usr/bin/time -f "$n nochange %e %U %S" "$bin" --repo /dev/shm/ab-repo run "$corpus" >/dev/null
  done
done
