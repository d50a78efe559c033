//! `bakare join` and `init --join`: invitations kept privately, refused with reasons that never
//! repeat the secret, and `serve:` repositories that name a server this machine never joined.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;

use chaos::testkit::Bakare;

const SECRET: &str = "5ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7";
const PIN: &str = "0f1e2d3c4b5a69780f1e2d3c4b5a69780f1e2d3c4b5a69780f1e2d3c4b5a6978";

fn bakare() -> Bakare {
    Bakare::new(env!("CARGO_BIN_EXE_bakare"))
}

fn invitation(secret: &str, host_port: &str) -> String {
    format!("bakare-join:https://laptop:{secret}@{host_port}/?sha256={PIN}")
}

#[test]
fn join_keeps_the_invitation_privately_and_says_how_to_use_it() {
    let mut b = bakare();
    b.env.push(("BAKARE_INVITATION".into(), invitation(SECRET, "Backup.Example.com:8443")));
    let out = b.ok(&["join"]).stdout_str();
    assert_eq!(
        out.trim(),
        format!(
            "joined https://backup.example.com:8443 (certificate sha256 {PIN}); use --repo \
             serve:https://backup.example.com:8443/<name>"
        )
    );
    let kept = b.home.path().join(".config/bakare/servers/backup.example.com_8443.json");
    assert_eq!(std::fs::metadata(&kept).unwrap().permissions().mode() & 0o777, 0o600);
    let entry: serde_json::Value = serde_json::from_slice(&std::fs::read(&kept).unwrap()).unwrap();
    assert_eq!(entry["secret"], SECRET);
    assert_eq!(entry["access_key"], "laptop");
}

#[test]
fn bad_invitations_are_refused_without_their_secret() {
    let b = bakare();
    let bad = invitation(&SECRET.to_uppercase(), "h:1");
    let o = b.run(&["join", bad.as_str()]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains("the secret must be 64 lower-case hex digits"), "{}", o.stderr);
    assert!(!o.stderr.to_lowercase().contains(SECRET), "{}", o.stderr);
    let o = b.run(&["join", &invitation(SECRET, "h")]);
    assert!(o.code == 1 && o.stderr.contains("no port"), "{}", o.stderr);
    assert!(!o.stderr.contains(SECRET), "{}", o.stderr);
    assert!(!b.home.path().join(".config/bakare/servers").exists());
}

#[test]
fn init_join_needs_the_invitations_server() {
    let b = bakare();
    let inv = invitation(SECRET, "h.example:1");
    let o = b.run(&["init", "--join", inv.as_str(), "--repo", "serve:https://other.example:1/photos"]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains("the invitation is for the server at h.example:1"), "{}", o.stderr);
    assert!(!o.stderr.contains(SECRET), "{}", o.stderr);
    let o = b.run(&["init", "--join", inv.as_str()]);
    assert!(o.code == 1 && o.stderr.contains("--join needs --repo serve:"), "{}", o.stderr);
    assert!(!b.home.path().join(".config/bakare/servers").exists());
}

#[test]
fn a_server_never_joined_is_named_with_what_to_do() {
    let b = bakare();
    let o = b.run(&["snapshots", "--repo", "serve:https://nas.example:8443/photos"]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(
        o.stderr.contains("has not joined the server at nas.example:8443")
            && o.stderr.contains("bakare join INVITATION"),
        "{}",
        o.stderr
    );
    let o = b.run(&["snapshots", "--repo", "serve:http://nas.example:8443/photos"]);
    assert!(o.code == 1 && o.stderr.contains("the scheme must be https"), "{}", o.stderr);
}
