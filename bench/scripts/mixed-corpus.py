#!/usr/bin/env python3
# The mixed corpus of the A/B runs in bench/README.md: 30,000 files of 200 B to 120 KiB (half
# random, half one repeated byte) in 300 directories, plus four 40 MiB random files, in
# /dev/shm/corpus (2.0 GB). Seeded sizes; the random bytes differ run to run.
import os, random
root='/dev/shm/corpus'
random.seed(7)
os.makedirs(root, exist_ok=True)
for d in range(300):
    dd=f'{root}/d{d:03}'; os.makedirs(dd, exist_ok=True)
    for i in range(100):
        n=random.randint(200, 120*1024)
        data = os.urandom(n) if (i%2==0) else bytes([i%251])*n
        open(f'{dd}/f{i:03}','wb').write(data)
for i in range(4):
    open(f'{root}/big{i}','wb').write(os.urandom(40<<20))
