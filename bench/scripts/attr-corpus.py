#!/usr/bin/env python3
# Marks a copy of a corpus for attribute capture: 1 file in 10 gets user.bench (16-64 random
# bytes), 1 in 50 a POSIX ACL (setfacl -m u:nobody:r; needs the acl package).
#   cp -a /dev/shm/corpus /dev/shm/corpus-x && bench/scripts/attr-corpus.py /dev/shm/corpus-x
import os, sys, subprocess, random
root = sys.argv[1]; rng = random.Random(7); acl = []; i = 0
for d in sorted(os.listdir(root)):
    for f in sorted(os.listdir(f'{root}/{d}')):
        p = f'{root}/{d}/{f}'
        if i % 10 == 0: os.setxattr(p, 'user.bench', rng.randbytes(rng.randrange(16, 65)))
        if i % 50 == 3: acl.append(p)
        i += 1
for k in range(0, len(acl), 500):
    subprocess.run(['setfacl', '-m', 'u:nobody:r', *acl[k:k+500]], check=True)
print(i, 'files', len(acl), 'acls')
