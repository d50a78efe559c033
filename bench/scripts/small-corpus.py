#!/usr/bin/env python3
# 1,000 directories x 300 files of 0-4 KiB (slices of 1 MiB of random bytes), deterministic:
#   bench/scripts/small-corpus.py OUT [SEED]     (300,000 files, ~585 MiB)
import os, random, sys
if len(sys.argv) < 2 or sys.argv[1].startswith('-') or os.path.exists(sys.argv[1]):
    sys.exit('usage: small-corpus.py OUT [SEED]  (OUT: a path that does not exist yet)')
out = sys.argv[1]; rng = random.Random(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
pool = rng.randbytes(1 << 20)
os.makedirs(out)
for d in range(1000):
    dp = f'{out}/d{d:04}'; os.mkdir(dp)
    for f in range(300):
        n = rng.randrange(0, 4097); off = rng.randrange(0, len(pool) - n)
        with open(f'{dp}/f{f:03}', 'wb') as fh: fh.write(pool[off:off + n])
