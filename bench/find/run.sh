#!/usr/bin/env bash
# The find benchmark (docs/find.md): a 300,000-file tree, 30 snapshots with ~1 % of the files
# touched between them, then first and warm `find` timings.
#   bench/find/run.sh [WORKDIR]      (default /tmp/findbench; needs python3 and a release build)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
B=$here/../../target/release/bakare
W=${1:-/tmp/findbench}
mkdir -p "$W"
cd "$W"
export HOME=$W/home BAKARE_REPO=$W/repo
t() { /usr/bin/time -f "$1: %e s wall, %U s user, %M KiB peak RSS" "${@:2}" > /dev/null; }
if [ ! -d repo ]; then
  python3 "$here/gen.py" create tree 300000 1
  $B init > /dev/null
  for i in $(seq 1 30); do
    if [ "$i" -gt 1 ]; then python3 "$here/gen.py" mutate tree 1 "$i" > /dev/null; fi
    t "snapshot $i" $B run tree
  done
fi
for i in 1 2 3; do
  rm -f home/.cache/bakare/*/catalog-v1
  t "first (builds the catalog)" $B find readme
done
ls -l home/.cache/bakare/*/catalog-v1
for q in readme raedme budget/rprt "report final"; do
  for i in 1 2 3; do t "warm find '$q'" $B find "$q"; done
done
for i in 1 2 3; do t "warm find --exact readme" $B find --exact readme; done
for i in 1 2 3; do t "warm find --glob '*.md'" $B find --glob '*.md'; done
for i in 1 2; do t "warm --json find readme -n 0 (every hit)" $B --json find readme -n 0; done
