#!/usr/bin/env python3
# No-change runs of two bakare binaries, interleaved: each gets its own repository and first
# backup of /dev/shm/corpus, then RUNS timed no-change runs each; prints medians and the ratio.
#   bench/scripts/nochange-ab.py OLD_BIN NEW_BIN RUNS
import subprocess, time, os, statistics, sys, shutil
old, new, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
corpus='/dev/shm/corpus'
res={'old':[], 'new':[]}
for which, b in (('old',old),('new',new)):
    home=f'/dev/shm/nc-home-{which}'; shutil.rmtree(home, ignore_errors=True); os.makedirs(home)
    env=dict(os.environ, HOME=home)
    subprocess.run([b,'--repo',f'{home}/repo','init'],env=env,check=True,capture_output=True)
    subprocess.run([b,'--repo',f'{home}/repo','run',corpus],env=env,check=True,capture_output=True)
for _ in range(runs):
    for which, b in (('old',old),('new',new)):
        home=f'/dev/shm/nc-home-{which}'; env=dict(os.environ, HOME=home)
        t=time.perf_counter()
        subprocess.run([b,'--repo',f'{home}/repo','run',corpus],env=env,check=True,capture_output=True)
        res[which].append(time.perf_counter()-t)
for w in res:
    v=res[w]; print(w, 'median %.1f ms' % (statistics.median(v)*1000), 'min %.1f ms' % (min(v)*1000))
print('ratio new/old median %.3f' % (statistics.median(res['new'])/statistics.median(res['old'])))
