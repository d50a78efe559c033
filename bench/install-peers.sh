#!/usr/bin/env bash
# Installs the peer backup tools that `bakare-bench compare` measures bakare against.
# Not part of CI: run it by hand on a bench machine, as root.
#
#   restic, borgbackup  from Debian's packages
#   bupstash            from crates.io (needs pkg-config and libsodium-dev to build)
#   rustic-rs           from crates.io (a long build: ~20+ min on 2 cores)
#
# Each failing install is reported and the script goes on; the exit code is the number of failures.
# `compare` skips whatever is not on PATH, with a note.
set -u

failures=()

step() {
    local name=$1
    shift
    echo "==> $name: $*"
    if "$@"; then
        echo "==> $name: ok"
    else
        echo "==> $name: FAILED (exit $?)" >&2
        failures+=("$name")
    fi
}

export DEBIAN_FRONTEND=noninteractive
step apt-update apt-get update
step apt-install apt-get install -y restic borgbackup pkg-config libsodium-dev
# bupstash links libsodium through pkg-config; the build fails without both.
step bupstash cargo install --locked bupstash
# rustic last: it is the slowest to build and the least likely to be needed.
step rustic-rs cargo install --locked rustic-rs

echo
for t in restic borg bupstash rustic; do
    if command -v "$t" >/dev/null 2>&1; then
        # restic has a `version` command and no --version flag.
        if [ "$t" = restic ]; then v=$(restic version 2>&1); else v=$("$t" --version 2>&1); fi
        echo "installed: $t (${v%%$'\n'*})"
    else
        echo "missing:   $t"
    fi
done
if ((${#failures[@]})); then
    echo "failed steps: ${failures[*]}" >&2
fi
exit "${#failures[@]}"
