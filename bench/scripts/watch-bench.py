#!/usr/bin/env python3
# What a run costs with and without `bakare watch`, on one tree, interleaved:
#   bench/scripts/watch-bench.py BAKARE CORPUS WORKDIR [ROUNDS]
# CORPUS: a tree from small-corpus.py (d0000..d0999 of f000..f299). WORKDIR gets the repository,
# the cache and the logs. Each round makes 1 change (one file appended to), then 100 changes
# (one file in each of 100 directories), and times, for each:
#   - the run the watcher makes of it (`--continuous --settle 1s`: lists changed directories),
#   - then a plain `run` of the same changes (a files cache of its own: a stat per file).
# Times are the runs' own `seconds` (scan to commit, in the process), and the wall time of the
# plain run's process. Prints medians.
import json, os, random, signal, statistics, subprocess, sys, time

bakare, corpus, work = sys.argv[1], os.path.abspath(sys.argv[2]), os.path.abspath(sys.argv[3])
rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 5
os.makedirs(work, exist_ok=True)
env = dict(os.environ, BAKARE_REPO=f'{work}/repo', BAKARE_CACHE_DIR=f'{work}/cache', HOME=work)
rng = random.Random(7)

def bk(*args):
    t = time.monotonic()
    out = subprocess.run([bakare, '--json', *args], env=env, check=True, capture_output=True).stdout
    return out, time.monotonic() - t

if not os.path.exists(f'{work}/repo'):
    bk('init')
for cache in ('cache', 'plain-cache'):
    bk('run', '--cache-dir', f'{work}/{cache}', corpus)
time.sleep(1.2)  # out of the racy second: everything is recorded in the files caches
for cache in ('cache', 'plain-cache'):
    bk('run', '--cache-dir', f'{work}/{cache}', corpus)

out = open(f'{work}/watch.out', 'w+')
err = open(f'{work}/watch.err', 'w')
w = subprocess.Popen([bakare, '--json', 'watch', '--continuous', '--settle', '1s', corpus],
                     env=env, stdout=out, stderr=err)

def runs():
    out.flush(); out.seek(0)
    return [json.loads(l) for l in out.read().splitlines() if l.startswith('{')]

def wait_runs(n, timeout=300):
    end = time.monotonic() + timeout
    while len(runs()) < n:
        if time.monotonic() > end: sys.exit(f'watcher stuck; see {work}/watch.err')
        time.sleep(0.05)
    return runs()[n - 1]

# The first run scans everything; wait for it and for quiet.
wait_runs(1); time.sleep(3)
seen = len(runs())

def change(k):
    for d in rng.sample(range(1000), k):
        with open(f'{corpus}/d{d:04}/f{rng.randrange(300):03}', 'ab') as f:
            f.write(b'x')

res = {'plain 1': [], 'watched 1': [], 'plain 100': [], 'watched 100': [], 'plain wall': []}
for r in range(rounds):
    for k in (1, 100):
        change(k)
        # The watcher's run of this change (after --settle), then quiet.
        got = wait_runs(seen + 1)
        time.sleep(1.5); seen = len(runs())
        res[f'watched {k}'].append(got['seconds'])
        # The same changes, seen by a plain run with a files cache of its own, made while the
        # watcher is idle.
        o, wall = bk('run', '--cache-dir', f'{work}/plain-cache', corpus)
        res[f'plain {k}'].append(json.loads(o)['seconds'])
        if k == 1: res['plain wall'].append(wall)

w.send_signal(signal.SIGTERM); w.wait()
for k, v in res.items():
    print(f'{k:12} median {statistics.median(v):.3f} s  ({", ".join(f"{x:.3f}" for x in v)})')
