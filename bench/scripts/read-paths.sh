#!/usr/bin/env bash
# One file read back three ways, interleaved, from a repository in /dev/shm: `restore`, `dump`
# to /dev/null, and `cat` through `bakare mount` (a fresh mount each round, so no page cache):
#   bench/scripts/read-paths.sh BIN [SIZE_MIB] [ROUNDS]
# Prints wall seconds and MB/s per run (1 MB = 10^6 bytes), and the mount's peak RSS.
set -euo pipefail
bin=$1; mib=${2:-1024}; rounds=${3:-3}
work=/dev/shm/read-paths; rm -rf "$work"; mkdir -p "$work/src" "$work/mnt"
export HOME=$work/home; mkdir -p "$HOME"
repo=$work/repo
head -c $((mib << 20)) /dev/urandom > "$work/src/big.bin"
"$bin" --repo "$repo" init >/dev/null
"$bin" --repo "$repo" run "$work/src" >/dev/null
bytes=$((mib << 20))
rate() { awk -v b="$bytes" -v s="$1" 'BEGIN { printf "%.0f MB/s", b / s / 1e6 }'; }
# Runs a command with its output to /dev/null; prints its wall seconds.
timed() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N); awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }'; }
for r in $(seq "$rounds"); do
    rm -rf "$work/t"
    s=$(timed "$bin" --repo "$repo" restore latest --target "$work/t")
    echo "round $r restore $s s $(rate "$s")"
    s=$(timed "$bin" --repo "$repo" dump latest "$work/src/big.bin")
    echo "round $r dump    $s s $(rate "$s")"
    "$bin" --repo "$repo" mount "$work/mnt" 2>/dev/null & pid=$!
    while [ ! -d "$work/mnt/snapshots" ]; do sleep 0.1; done
    s=$(timed cat "$work/mnt/latest$work/src/big.bin")
    hwm=$(awk '/VmHWM/ { print $2 }' "/proc/$pid/status")
    echo "round $r mount   $s s $(rate "$s") (mount peak RSS $((hwm / 1024)) MiB)"
    fusermount3 -u "$work/mnt" 2>/dev/null || fusermount -u "$work/mnt"
    wait "$pid"
done
rm -rf "$work"
