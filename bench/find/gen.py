#!/usr/bin/env python3
"""The find benchmark's corpus (bench/find/run.sh): a tree of small files with realistic names,
and ~1 % mutations between snapshots.
gen.py create DIR N SEED | gen.py mutate DIR PERCENT SEED"""
import os, random, sys

WORDS = ("alpha beta gamma delta report invoice photo holiday budget notes draft final config "
         "server client model view controller test spec data backup archive music album track "
         "letter resume thesis chapter figure table summary readme license index main util "
         "parser lexer render shader texture mesh audio video stream cache queue worker").split()
EXTS = [".txt", ".md", ".rs", ".py", ".json", ".jpg", ".csv", ".log", ".toml", ".html"]

def name(r):
    n = r.choice(WORDS)
    if r.random() < 0.6:
        n += r.choice(["-", "_", ""]) + r.choice(WORDS)
    if r.random() < 0.4:
        n += str(r.randrange(1000))
    return n

def create(root, total, seed):
    r = random.Random(seed)
    made = 0
    p = 0
    while made < total:
        proj = os.path.join(root, f"{name(r)}-{p}")
        p += 1
        # a project: a few levels of directories, 10-60 files each
        dirs = [proj]
        for _ in range(r.randrange(5, 40)):
            dirs.append(os.path.join(r.choice(dirs), name(r)))
        for d in dirs:
            os.makedirs(d, exist_ok=True)
            for _ in range(r.randrange(10, 60)):
                if made >= total:
                    break
                f = os.path.join(d, name(r) + r.choice(EXTS))
                if os.path.exists(f):
                    continue
                with open(f, "w") as fh:
                    fh.write(f"{name(r)} {r.random()}\n" * r.randrange(1, 4))
                made += 1
        if r.random() < 0.5:
            with open(os.path.join(proj, "README.md"), "w") as fh:
                fh.write(f"# {proj}\n")
                made += 1
    print(f"{made} files in {p} projects")

def mutate(root, percent, seed):
    r = random.Random(seed)
    files = []
    for d, _, fs in os.walk(root):
        files.extend(os.path.join(d, f) for f in fs)
    files.sort()
    k = int(len(files) * percent / 100)
    pick = r.sample(files, k)
    added = k // 10
    for f in pick[: k - 2 * added]:
        with open(f, "a") as fh:
            fh.write(f"edit {seed} {r.random()}\n")
    for f in pick[k - 2 * added : k - added]:
        os.remove(f)
    for f in pick[k - added :]:
        n = os.path.join(os.path.dirname(f), f"new-{seed}-{name(r)}{r.choice(EXTS)}")
        with open(n, "w") as fh:
            fh.write(f"new {r.random()}\n")
    print(f"mutated {k} of {len(files)} files")

if __name__ == "__main__":
    cmd, d, a, seed = sys.argv[1:5]
    (create if cmd == "create" else mutate)(d, float(a) if cmd == "mutate" else int(a), int(seed))
