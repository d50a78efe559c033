#!/usr/bin/env python3
# Re-runs of two bakare binaries over one corpus, interleaved (the order alternates run by run):
# each gets its own repository and first backup, then RUNS timed runs each; prints wall-time
# medians and the ratio, and each run's CPU time (user+sys, from wait4) the same way.
#   bench/scripts/nochange-ab.py OLD_BIN NEW_BIN RUNS [CORPUS] [--touch-per-dir]
# CORPUS defaults to /dev/shm/corpus. --touch-per-dir: before each pair of runs, give one file
# in every directory under CORPUS a new mtime (then wait out bakare's 1 s racy window), so every
# directory's tree is built again while almost all file contents still come from the files cache.
import subprocess, time, os, statistics, sys, shutil
args = [a for a in sys.argv[1:] if not a.startswith('--')]
touch = '--touch-per-dir' in sys.argv[1:]
old, new, runs = args[0], args[1], int(args[2])
corpus = args[3] if len(args) > 3 else '/dev/shm/corpus'
bins = {'old': old, 'new': new}
wall = {'old': [], 'new': []}
cpu = {'old': [], 'new': []}

def run(which, timed):
    home = f'/dev/shm/nc-home-{which}'
    env = dict(os.environ, HOME=home)
    cmd = [bins[which], '--repo', f'{home}/repo', 'run', corpus]
    t = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    dt = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f'{which}: {" ".join(cmd)} failed: {err.decode(errors="replace")}')
    if timed:
        wall[which].append(dt)
        cpu[which].append(ru.ru_utime + ru.ru_stime)

dirs = sorted(os.path.join(d, '') for d, _, fs in os.walk(corpus) if fs) if touch else []
def touch_all(r):
    now = time.time_ns()
    for d in dirs:
        fs = sorted(os.listdir(d))
        f = d + fs[r % len(fs)]
        if os.path.isfile(f):
            os.utime(f, ns=(now, now))
    time.sleep(1.2)

for which in bins:
    home = f'/dev/shm/nc-home-{which}'
    shutil.rmtree(home, ignore_errors=True)
    os.makedirs(home)
    subprocess.run([bins[which], '--repo', f'{home}/repo', 'init'],
                   env=dict(os.environ, HOME=home), check=True, capture_output=True)
    run(which, False)
for r in range(runs):
    if touch:
        touch_all(r)
    order = ('old', 'new') if r % 2 == 0 else ('new', 'old')
    for which in order:
        run(which, True)
for w in wall:
    v, c = wall[w], cpu[w]
    print(w, 'median %.1f ms' % (statistics.median(v) * 1000), 'min %.1f ms' % (min(v) * 1000),
          'cpu median %.1f ms' % (statistics.median(c) * 1000), 'cpu min %.1f ms' % (min(c) * 1000))
print('ratio new/old median %.3f' % (statistics.median(wall['new']) / statistics.median(wall['old'])),
      'cpu %.3f' % (statistics.median(cpu['new']) / statistics.median(cpu['old'])))
print('pairs (ms, old/new wall, old/new cpu):',
      ' '.join('%.0f/%.0f,%.0f/%.0f' % (a * 1000, b * 1000, c * 1000, d * 1000)
               for a, b, c, d in zip(wall['old'], wall['new'], cpu['old'], cpu['new'])))
