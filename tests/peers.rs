//! Peer-to-peer backups between friends, end to end with the real binary on three machines:
//! network namespaces joined by a bridge (chaos::lan). Two run `bakare serve --peers` and
//! announce themselves; the third finds both with `bakare peers`, pairs with each (the owner
//! approves the code the friend's machine shows; a wrong code approves nothing), backs up to
//! `--repo peer:NAME` and restores byte for byte. A paired friend is confined to its own
//! repository, an unpaired name and a removed friend are refused with what to do.
//!
//! Needs root and network namespaces: without them the test says that it skipped, unless
//! BAKARE_REQUIRE_NETNS is set (`.ci/run`), which makes that a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use chaos::lan::Lan;
use chaos::testkit::{assert_same_tree, random_tree, restored_path, skipped, Bakare, TestDir};

fn bakare() -> Bakare {
    Bakare::new(env!("CARGO_BIN_EXE_bakare"))
}

/// `bakare ARGS` run inside node `i` of the LAN, with `b`'s environment.
fn on(b: &Bakare, lan: &Lan, i: usize, args: &[&str]) -> Command {
    let mut v: Vec<&std::ffi::OsStr> =
        vec!["netns".as_ref(), "exec".as_ref(), lan.ns(i).as_ref(), b.bin.as_os_str()];
    v.extend(args.iter().map(|a| std::ffi::OsStr::new(*a)));
    b.command_of(Path::new("ip"), &v)
}

#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(mut c: Command) -> Out {
    let o = c.output().unwrap();
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn ok(c: Command) -> Out {
    let o = run(c);
    assert_eq!(o.code, 0, "stdout: {}\nstderr: {}", o.stdout, o.stderr);
    o
}

/// A `bakare serve --peers` in a node; stopped (SIGTERM, then waited for) when dropped.
struct Persister {
    child: Option<Child>,
    storage: TestDir,
    node: usize,
    name: String,
    sha256: String,
    port: u16,
}

impl Persister {
    fn start(b: &Bakare, lan: &Lan, node: usize, name: &str) -> Persister {
        let mut p = Persister {
            child: None,
            storage: TestDir::new(),
            node,
            name: name.to_string(),
            sha256: String::new(),
            port: 0,
        };
        p.resume(b, lan);
        p
    }

    /// Starts the server (again), on the same storage and port.
    fn resume(&mut self, b: &Bakare, lan: &Lan) {
        let dir = self.storage.path().to_str().unwrap().to_string();
        let args = [
            "--json",
            "serve",
            "--storage",
            &dir,
            "--listen",
            "0.0.0.0:8443",
            "--peers",
            "--name",
            &self.name,
        ];
        let mut child =
            on(b, lan, self.node, &args).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        let sha256 = v["sha256"].as_str().unwrap().to_string();
        assert!(self.sha256.is_empty() || self.sha256 == sha256, "the certificate stays");
        self.sha256 = sha256;
        self.port = v["listening"].as_str().unwrap().parse::<std::net::SocketAddr>().unwrap().port();
        self.child = Some(child);
    }

    /// Kills the server at once (kill -9: `ip netns exec` runs it as its own child, so the
    /// signal goes to the server itself through its process group is not needed).
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `bakare serve --storage DIR ARGS` for this server's owner (on the same disk).
    fn admin(&self, b: &Bakare, args: &[&str]) -> Out {
        let mut v = vec!["serve", "--storage", self.storage.path().to_str().unwrap()];
        v.extend_from_slice(args);
        run(b.command(&v))
    }
}

impl Drop for Persister {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `bakare peers pair NAME --as ME` in node `i`; returns the code it shows and the
/// process, which waits for the approval.
fn start_pairing(b: &Bakare, lan: &Lan, i: usize, name: &str, me: &str) -> (String, Child) {
    let mut c = on(b, lan, i, &["peers", "pair", name, "--as", me, "--timeout", "10s", "--wait", "60s"]);
    let mut child = c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    let code: String = line
        .strip_prefix("pairing code ")
        .unwrap_or_else(|| panic!("{line:?}"))
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    assert_eq!(code.len(), 6, "{line:?}");
    (code, child)
}

/// `--approve CODE --quota 1G` on `p`; returns the confirmation code it shows.
fn approve(p: &Persister, b: &Bakare, code: &str) -> String {
    let o = p.admin(b, &["--approve", code, "--quota", "1G"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let line = o
        .stdout
        .lines()
        .find(|l| l.starts_with("confirmation code "))
        .unwrap_or_else(|| panic!("{}", o.stdout));
    let digits: String =
        line["confirmation code ".len()..].chars().take(7).filter(char::is_ascii_digit).collect();
    assert_eq!(digits.len(), 6, "{line}");
    digits
}

/// Types `confirmation` into a pairing that waits for it.
fn type_in(child: &mut Child, confirmation: &str) {
    use std::io::Write;
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{confirmation}").unwrap();
}

fn finish(child: Child) -> Out {
    let o = child.wait_with_output().unwrap();
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn lan_or_skip(nodes: usize) -> Option<Lan> {
    match Lan::new(nodes) {
        Ok(l) => Some(l),
        Err(why) => {
            assert!(
                std::env::var_os("BAKARE_REQUIRE_NETNS").is_none(),
                "BAKARE_REQUIRE_NETNS is set, and the peers test cannot build its network: {why}"
            );
            skipped(&format!("peer-to-peer test: {why}"));
            None
        }
    }
}

#[test]
fn friends_are_found_paired_by_code_and_back_up_to_each_other_confined_to_their_repository() {
    let Some(lan) = lan_or_skip(3) else { return };
    let owner = bakare();
    let mut alice = Persister::start(&owner, &lan, 0, "alice");
    let mut bob = Persister::start(&owner, &lan, 1, "bob");
    let mut carol = bakare();
    carol.env.push(("BAKARE_CONFIG_DIR".into(), carol.home.path().join("cfg").to_str().unwrap().into()));

    // Discovery: both servers, as persisters, with their fingerprints and addresses.
    let listed = ok(on(&carol, &lan, 2, &["--json", "peers", "--timeout", "5s"]));
    let found: Vec<serde_json::Value> =
        listed.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(found.len(), 2, "{}", listed.stdout);
    for (f, (name, p, i)) in found.iter().zip([("alice", &alice, 0), ("bob", &bob, 1)]) {
        assert_eq!(f["name"], name);
        assert_eq!(f["roles"], serde_json::json!(["persister"]));
        assert_eq!(f["sha256"], p.sha256.as_str());
        assert_eq!(f["port"], p.port);
        assert_eq!(f["addresses"][0], lan.addr(i).to_string());
        assert_eq!(f["paired"], "not paired");
        assert!(f["free"].as_u64().unwrap() > 0);
    }

    // Pairing: the code the owner sees is the one carol's machine shows; a wrong code approves
    // nothing; the right one makes carol an append-only client of her own repository.
    let (code, pairing) = start_pairing(&carol, &lan, 2, "alice", "carol");
    let pending = alice.admin(&owner, &["--pending"]);
    assert!(pending.stdout.starts_with("carol\trepository carol\tasked "), "{}", pending.stdout);
    assert!(!pending.stdout.contains(&code), "the code is taken from carol's screen, not listed");
    let wrong = format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000);
    let refused = alice.admin(&owner, &["--approve", &wrong, "--quota", "1G"]);
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(refused.stderr.contains(&format!("no pairing request shows code {wrong}")), "{}", refused.stderr);
    assert!(alice.admin(&owner, &["--list-clients"]).stdout.is_empty(), "a wrong code added a client");
    let mut pairing = pairing;
    type_in(&mut pairing, &approve(&alice, &owner, &code));
    let paired = finish(pairing);
    assert_eq!(paired.code, 0, "{}", paired.stderr);
    assert!(paired.stdout.contains("paired with alice"), "{}", paired.stdout);
    // Approved, but the confirmation typed is not the owner's: nothing is kept (whoever
    // answered may not be bob).
    let (code, mut pairing) = start_pairing(&carol, &lan, 2, "bob", "carol-test");
    let confirmation = approve(&bob, &owner, &code);
    let wrong = format!("{:06}", (confirmation.parse::<u32>().unwrap() + 1) % 1_000_000);
    type_in(&mut pairing, &wrong);
    let refused = finish(pairing);
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(refused.stderr.contains("not paired: the confirmation code was not given"), "{}", refused.stderr);
    assert!(!carol.home.path().join("cfg/peers/bob.json").exists());
    assert_eq!(bob.admin(&owner, &["--remove-client", "carol-test"]).code, 0);
    let (code, mut pairing) = start_pairing(&carol, &lan, 2, "bob", "carol");
    type_in(&mut pairing, &approve(&bob, &owner, &code));
    assert_eq!(finish(pairing).code, 0);
    let listed = ok(on(&carol, &lan, 2, &["--json", "peers", "--timeout", "5s"]));
    assert_eq!(listed.stdout.matches("\"paired\":\"paired\"").count(), 2, "{}", listed.stdout);

    // One run keeps the snapshot with both friends: in alice's repository, and in bob's,
    // which the run creates as a copy of it.
    let src = TestDir::new();
    random_tree(src.path(), 21, 60);
    let src_arg = src.path().to_str().unwrap();
    ok(on(&carol, &lan, 2, &["init", "--repo", "peer:alice"]));
    let both = ["--repo", "peer:alice", "--repo", "peer:bob"];
    let o = ok(on(&carol, &lan, 2, &[&["--json", "run", src_arg][..], &both].concat()));
    let copies: serde_json::Value = serde_json::from_str(o.stdout.lines().last().unwrap()).unwrap();
    assert_eq!(copies["held_by"], serde_json::json!(["peer:alice", "peer:bob"]), "{}", o.stdout);
    for peer in ["peer:alice", "peer:bob"] {
        let target = TestDir::new();
        ok(on(
            &carol,
            &lan,
            2,
            &["restore", "--repo", peer, "latest", "--target", target.path().to_str().unwrap()],
        ));
        assert_same_tree(src.path(), &restored_path(target.path(), src.path()));
    }
    assert!(alice.storage.path().join("carol/config").is_file());
    assert!(bob.storage.path().join("carol/config").is_file());

    // Bob is killed while a backup runs: the run commits into alice, says bob missed it, and
    // exits 0; with --min-copies 2 and bob down, a run fails; bob back, it catches up.
    let big = TestDir::new().file("big", chaos::testkit::Rng::new(5).bytes(96 << 20));
    let big_arg = big.path().to_str().unwrap();
    let running = |args: &[&str]| {
        let mut c = on(&carol, &lan, 2, &[&["--json", "run"][..], args, &both].concat());
        c.env("BAKARE_S3_RETRY_BUDGET_MS", "3000").env("BAKARE_S3_CONNECT_TIMEOUT_MS", "2000");
        c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
    };
    let wait_for_a_pack = |p: &Persister| {
        let packs = p.storage.path().join("carol/packs");
        let before = walk_files(&packs);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while walk_files(&packs) <= before {
            assert!(std::time::Instant::now() < deadline, "the backup wrote no pack into {}", p.name);
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    let held_by = |o: &Out| -> serde_json::Value {
        serde_json::from_str::<serde_json::Value>(o.stdout.lines().last().unwrap()).unwrap()["held_by"]
            .clone()
    };
    let snapshots = |peer: &str| {
        let o = ok(on(&carol, &lan, 2, &["--json", "snapshots", "--repo", peer]));
        serde_json::from_str::<serde_json::Value>(&o.stdout).unwrap().as_array().unwrap().len()
    };
    let child = running(&[big_arg]);
    wait_for_a_pack(&alice);
    bob.kill();
    let o = finish(child);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stderr.contains("peer:bob: the snapshot was not copied there"), "{}", o.stderr);
    assert_eq!(held_by(&o), serde_json::json!(["peer:alice"]), "{}", o.stdout);
    let o = run(on(&carol, &lan, 2, &[&["run", "--min-copies", "2", src_arg][..], &both].concat()));
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(
        o.stderr.contains("the snapshot is in 1 of 2 repositories (peer:alice), fewer than --min-copies 2"),
        "{}",
        o.stderr
    );
    bob.resume(&owner, &lan);
    ok(on(&carol, &lan, 2, &[&["run", src_arg][..], &both].concat()));
    assert_eq!((snapshots("peer:alice"), snapshots("peer:bob")), (4, 4), "bob caught up");

    // Audits (every pack alice holds is needed by a snapshot now): every pack passes, each
    // challenge costing a bounded number of bytes; then one pack deleted, one truncated and one
    // with a byte flipped fail (each where its next challenge looks), the snapshots that need
    // them are named, and bob's intact copy passes.
    let audit = |peer: &str| {
        let o = run(on(&carol, &lan, 2, &["--json", "peers", "audit", peer, "--sample", "1000"]));
        let v: serde_json::Value =
            serde_json::from_str(o.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {o:?}"));
        (o.code, v)
    };
    let (code, v) = audit("alice");
    let audited = v["audited"].as_u64().unwrap();
    assert_eq!(code, 0, "{v}");
    assert!(audited >= 4, "{v}");
    assert_eq!(v["passed"].as_u64(), Some(audited), "{v}");
    assert!(v["bytes_received"].as_u64().unwrap() <= 128 * audited, "{v}");
    assert!(v["bytes_sent"].as_u64().unwrap() <= 1024 * audited, "{v}");
    let audits = carol.home.path().join(".cache/bakare/audits");
    let prefix = format!("{}_", lan.addr(0));
    let store = std::fs::read_dir(&audits)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_str().unwrap().starts_with(&prefix))
        .unwrap();
    let mut damaged = Vec::new();
    let mut originals = Vec::new();
    // The three largest packs: the 96 MiB file's data, which only they hold (a small pack may
    // hold only blobs stored elsewhere too, whose loss costs nothing; the audit says "gone").
    let mut files: Vec<(u64, std::path::PathBuf, String)> = std::fs::read_dir(&store)
        .unwrap()
        .flatten()
        .map(|f| {
            let hash = f.file_name().to_str().unwrap().to_string();
            let key = format!("packs/{}/{hash}", &hash[..2]);
            let size = std::fs::metadata(alice.storage.path().join("carol").join(&key))
                .map(|m| m.len())
                .unwrap_or(0);
            (size, f.path(), key)
        })
        .collect();
    files.sort();
    for (i, (_, f, key)) in files.into_iter().rev().take(3).enumerate() {
        let text = std::fs::read_to_string(&f).unwrap();
        let offset: u64 = text.lines().last().unwrap().split(' ').next().unwrap().parse().unwrap();
        let pack = alice.storage.path().join("carol").join(&key);
        originals.push((pack.clone(), std::fs::read(&pack).unwrap()));
        match i {
            0 => std::fs::remove_file(&pack).unwrap(),
            1 => std::fs::OpenOptions::new().write(true).open(&pack).unwrap().set_len(offset).unwrap(),
            _ => {
                let mut bytes = std::fs::read(&pack).unwrap();
                bytes[offset as usize] ^= 0x20;
                std::fs::write(&pack, bytes).unwrap();
            }
        }
        damaged.push(key);
    }
    assert_eq!(damaged.len(), 3);
    let (code, v) = audit("alice");
    assert_eq!(code, 3, "{v}");
    let mut failed: Vec<String> =
        v["failed"].as_array().unwrap().iter().map(|f| f["pack"].as_str().unwrap().to_string()).collect();
    failed.sort();
    damaged.sort();
    assert_eq!(failed, damaged, "{v}");
    assert_eq!(v["gone"], serde_json::json!([]), "{v}");
    let listed = ok(on(&carol, &lan, 2, &["--json", "snapshots", "--repo", "peer:alice"])).stdout;
    let at_risk = v["at_risk"].as_array().unwrap();
    assert!(!at_risk.is_empty(), "{v}");
    for r in at_risk {
        assert!(listed.contains(r["snapshot"].as_str().unwrap()), "{v}");
    }
    let (code, v) = audit("bob");
    assert_eq!(code, 0, "{v}");
    assert!(v["audited"].as_u64().unwrap() >= 4 && v["failed"].as_array().unwrap().is_empty(), "{v}");
    // Alice's owner puts the packs back (from a backup of the disk, say).
    for (path, bytes) in originals {
        std::fs::write(path, bytes).unwrap();
    }

    // Alice is killed in the middle of a backup into her: the run goes on into bob, commits
    // there, and says alice missed it. Copies go one way only (from the repository the backup
    // went into), so that snapshot stays with bob.
    let big = TestDir::new().file("big", chaos::testkit::Rng::new(6).bytes(96 << 20));
    let child = running(&[big.path().to_str().unwrap()]);
    wait_for_a_pack(&alice);
    alice.kill();
    let o = finish(child);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stderr.contains("peer:alice: the backup into it failed"), "{}", o.stderr);
    assert_eq!(held_by(&o), serde_json::json!(["peer:bob"]), "{}", o.stdout);
    alice.resume(&owner, &lan);
    ok(on(&carol, &lan, 2, &[&["run", src_arg][..], &both].concat()));
    assert_eq!((snapshots("peer:alice"), snapshots("peer:bob")), (5, 6));
    for peer in ["peer:alice", "peer:bob"] {
        let target = TestDir::new();
        let t = target.path().to_str().unwrap();
        ok(on(&carol, &lan, 2, &["restore", "--repo", peer, "latest", "--target", t]));
        assert_same_tree(src.path(), &restored_path(target.path(), src.path()));
    }

    // A watcher audits bob after its first run, and says so in its status.
    let watch = ["watch", "--repo", "peer:bob", "--audit-every", "1h", "--audit-sample", "4", src_arg];
    let watcher =
        Stopped(on(&carol, &lan, 2, &watch).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let status = loop {
        let o = run(on(&carol, &lan, 2, &["--json", "watch", "--status", "--repo", "peer:bob", src_arg]));
        let v: serde_json::Value = serde_json::from_str(o.stdout.trim()).unwrap_or_default();
        if v["last_audit"].is_object() {
            break v;
        }
        assert!(std::time::Instant::now() < deadline, "no audit in the watcher's status: {o:?}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    drop(watcher);
    let last_audit = &status["last_audit"];
    assert_eq!(last_audit["audited"], 4, "{status}");
    assert_eq!(last_audit["passed"], 4, "{status}");

    // Confined: carol's credential reaches no other repository on alice.
    let other = alice.storage.path().join("dave-laptop");
    ok(owner.command(&["init", "--repo", other.to_str().unwrap()]));
    let url = format!("serve:https://{}:{}/dave-laptop", lan.addr(0), alice.port);
    let o = run(on(&carol, &lan, 2, &["snapshots", "--repo", &url]));
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains("it may use only the repository it was given"), "{}", o.stderr);

    // An unpaired name, and a friend the owner removed, are refused.
    let o = run(on(&carol, &lan, 2, &["snapshots", "--repo", "peer:erin"]));
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("has not paired with a peer named \"erin\""), "{}", o.stderr);
    assert_eq!(alice.admin(&owner, &["--remove-client", "carol"]).code, 0);
    let o = run(on(&carol, &lan, 2, &["run", "--repo", "peer:alice", src_arg]));
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains("its owner may have removed the client"), "{}", o.stderr);
    // Bob still keeps carol's backups.
    ok(on(&carol, &lan, 2, &["run", "--repo", "peer:bob", src_arg]));

    // A server that is down: the audit stops at once, says so (exit 1), and uses up no
    // challenge (a server cannot make challenges run out by not answering).
    let challenges = |node: usize| -> usize {
        let prefix = format!("{}_", lan.addr(node));
        let dir = std::fs::read_dir(&audits)
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_str().unwrap().starts_with(&prefix))
            .unwrap()
            .path();
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|f| std::fs::read_to_string(f.path()).unwrap().lines().count())
            .sum()
    };
    let before = challenges(1);
    bob.kill();
    let (code, v) = audit("bob");
    assert_eq!(code, 1, "{v}");
    assert!(v["unreachable"].is_string() && v["audited"] == 0, "{v}");
    assert_eq!(challenges(1), before);
}

/// Files below `dir`, at any depth.
fn walk_files(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.flatten()
        .map(|e| if e.file_type().is_ok_and(|t| t.is_dir()) { walk_files(&e.path()) } else { 1 })
        .sum()
}

/// A process stopped (SIGTERM, then waited for) when dropped, panics included.
struct Stopped(Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}
