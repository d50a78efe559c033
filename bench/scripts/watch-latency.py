#!/usr/bin/env python3
# How long a change waits for a snapshot under `bakare watch --continuous`:
#   bench/scripts/watch-latency.py BAKARE CORPUS WORKDIR [EDITS] [SETTLE]
# CORPUS: a tree from small-corpus.py. EDITS single edits (one file rewritten and closed, then
# nothing until its snapshot is committed), then one burst of 10,000 edits (10 files in each of
# 1,000 directories, as fast as Python writes them). The latency of an edit is from its close
# to the moment the watcher's run that holds it has printed its summary (after the commit).
# Prints the median and 99th percentile of the single edits, and the burst's latency from its
# last close.
import json, os, random, signal, statistics, subprocess, sys, time

bakare, corpus, work = sys.argv[1], os.path.abspath(sys.argv[2]), os.path.abspath(sys.argv[3])
edits = int(sys.argv[4]) if len(sys.argv) > 4 else 20
settle = sys.argv[5] if len(sys.argv) > 5 else '1s'
os.makedirs(work, exist_ok=True)
env = dict(os.environ, BAKARE_REPO=f'{work}/repo', BAKARE_CACHE_DIR=f'{work}/cache', HOME=work)
subprocess.run([bakare, 'init'], env=env, capture_output=True)
out = open(f'{work}/latency.out', 'w+')
err = open(f'{work}/latency.err', 'w')
w = subprocess.Popen([bakare, '--json', 'watch', '--continuous', '--settle', settle, corpus],
                     env=env, stdout=out, stderr=err)
rng = random.Random(3)

def runs():
    out.flush(); out.seek(0)
    return sum(1 for l in out.read().splitlines() if l.startswith('{'))

def next_run(seen, timeout=600):
    end = time.monotonic() + timeout
    while runs() <= seen:
        if time.monotonic() > end: sys.exit(f'watcher stuck; see {work}/latency.err')
        time.sleep(0.005)
    return time.monotonic()

def quiet():
    n = runs()
    while True:
        time.sleep(3)
        if runs() == n: return n
        n = runs()

next_run(0); seen = quiet()
lat = []
for i in range(edits):
    with open(f'{corpus}/d{rng.randrange(1000):04}/f{rng.randrange(300):03}', 'ab') as f:
        f.write(b'y')
    closed = time.monotonic()
    lat.append(next_run(seen) - closed)
    seen = quiet()
for d in range(1000):
    for k in range(10):
        with open(f'{corpus}/d{d:04}/f{k:03}', 'ab') as f:
            f.write(b'z')
closed = time.monotonic()
burst = next_run(seen) - closed
w.send_signal(signal.SIGTERM); w.wait()
lat.sort()
p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
print(f'settle {settle}: single edits: median {statistics.median(lat):.3f} s, p99 {p99:.3f} s (n={len(lat)}); '
      f'a burst of 10,000 edits: {burst:.3f} s after its last close')
