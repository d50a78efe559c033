#!/usr/bin/env bash
# A first backup and a restore of CORPUS into a local directory and through `bakare serve` on
# loopback, interleaved (local, serve, local, serve, ...), each into a new repository; then the
# server's peak RSS while three clients back up CORPUS at once (three repositories):
#   bench/scripts/serve-bench.sh BIN CORPUS RUNS
# Everything lives in /dev/shm (the server's storage too), so what differs is the protocol:
# TLS, HTTP, S3 requests. Prints wall seconds per run (GNU time) and the server's VmHWM.
set -euo pipefail
bin=$1; corpus=$2; runs=$3
w=/dev/shm/serve-bench; rm -rf "$w"; mkdir -p "$w/home" "$w/storage"
export HOME=$w/home
"$bin" serve --storage "$w/storage" --listen 127.0.0.1:0 2> "$w/server.log" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 50); do grep -q "listening on" "$w/server.log" 2>/dev/null && break; sleep 0.1; done
port=$(sed -n 's/.*listening on https:\/\/127.0.0.1:\([0-9]*\).*/\1/p' "$w/server.log")
"$bin" serve --storage "$w/storage" --add-client owner --owner --address "127.0.0.1:$port" 2>/dev/null > "$w/inv"
"$bin" join "$(cat "$w/inv")" > /dev/null
for i in $(seq "$runs"); do
    for where in local serve; do
        if [ "$where" = local ]; then repo=$w/local-$i; else repo=serve:https://127.0.0.1:$port/repo-$i; fi
        "$bin" --repo "$repo" init > /dev/null 2>&1
        /usr/bin/time -f "backup $where %e s" "$bin" --repo "$repo" run "$corpus" --no-cache > /dev/null
        rm -rf "$w/target"
        /usr/bin/time -f "restore $where %e s" "$bin" --repo "$repo" restore latest --target "$w/target" > /dev/null
        if [ "$where" = local ]; then rm -rf "$repo"; else rm -rf "$w/storage/repo-$i"; fi
    done
done
rm -rf "$w/target"
echo 5 > /proc/$server/clear_refs
for c in 1 2 3; do
    "$bin" --repo "serve:https://127.0.0.1:$port/client-$c" init > /dev/null 2>&1
done
start=$(date +%s.%N)
pids=""
for c in 1 2 3; do
    "$bin" --repo "serve:https://127.0.0.1:$port/client-$c" run "$corpus" --no-cache > /dev/null &
    pids="$pids $!"
done
for p in $pids; do wait "$p"; done
end=$(date +%s.%N)
echo "three clients at once: $(echo "$end - $start" | bc) s; server $(grep VmHWM /proc/$server/status)"
