//! Servers this machine has joined (`bakare serve`), from their invitations.
//!
//! An invitation is one line, `bakare-join:https://NAME:SECRET@HOST:PORT/?sha256=HEX64`: the
//! client's name (its S3 access key id), its secret (the S3 secret key), where the server
//! listens, and the SHA-256 of its certificate's DER when it made that certificate itself (no
//! `?sha256=`: a certificate signed by a public CA, verified as usual). Joining keeps it as
//! `<config>/servers/<host>_<port>.json` (mode 0600), and `serve:https://HOST:PORT/REPO` finds
//! it there. `<config>` is `$BAKARE_CONFIG_DIR`, else the user's configuration directory's
//! `bakare` (~/.config/bakare).
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use crate::durable;

const SCHEME: &str = "bakare-join:";

/// A joined server: where it is, how its certificate is recognised, and the client's key.
#[derive(Clone, PartialEq, Eq)]
pub struct Joined {
    /// `https://host:port`
    pub url: String,
    /// SHA-256 of the server certificate's DER; `None`: verified against the public CAs.
    pub sha256: Option<[u8; 32]>,
    pub access_key: String,
    pub secret: String,
}

impl std::fmt::Debug for Joined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Joined")
            .field("url", &self.url)
            .field("sha256", &self.sha256.map(hex::encode))
            .field("access_key", &self.access_key)
            .field("secret", &"[redacted]")
            .finish()
    }
}

impl Drop for Joined {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.secret.zeroize();
    }
}

impl Joined {
    /// `host:port`, as `serve:https://host:port/repo` names the server.
    pub fn host_port(&self) -> &str {
        self.url.strip_prefix("https://").unwrap_or(&self.url)
    }

    /// The certificate's SHA-256 in lower-case hex, if pinned.
    pub fn sha256_hex(&self) -> Option<String> {
        self.sha256.map(hex::encode)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JoinedError {
    #[error(
        "this machine has not joined the server at {host_port} (no {}): run `bakare join INVITATION` \
         with the invitation its owner made (`bakare serve --add-client NAME`)",
        path.display()
    )]
    NotJoined { host_port: String, path: PathBuf },
    #[error(
        "this machine has not paired with a peer named {name:?}: `bakare peers` lists the ones on this \
         network, `bakare peers pair NAME` pairs with one"
    )]
    NotPaired { name: String },
    #[error("no configuration directory: set BAKARE_CONFIG_DIR (or HOME)")]
    NoConfigDir,
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a joined server's entry: {why}", path.display())]
    Corrupt { path: PathBuf, why: String },
}

/// Parses an invitation. The error says what is wrong with it, and never repeats the secret (nor
/// anything else of the line).
pub fn parse_invitation(line: &str) -> Result<Joined, String> {
    let bad = |why: &str| {
        format!("not a bakare invitation (bakare-join:https://NAME:SECRET@HOST:PORT/?sha256=HEX): {why}")
    };
    let rest = line.trim().strip_prefix(SCHEME).ok_or_else(|| bad("it does not start with bakare-join:"))?;
    let u = url::Url::parse(rest).map_err(|e| bad(&format!("not a URL ({e})")))?;
    if u.scheme() != "https" {
        return Err(bad("the scheme must be https"));
    }
    let (host, port) = host_port(rest, &u).map_err(|why| bad(&why))?;
    let name = u.username();
    if !valid_name(name) {
        return Err(bad("the client name must be 1 to 64 letters, digits, '_' or '-'"));
    }
    let secret = u.password().ok_or_else(|| bad("no secret after the client name"))?;
    if !is_lower_hex(secret, 64) {
        return Err(bad("the secret must be 64 lower-case hex digits"));
    }
    if !matches!(u.path(), "" | "/") {
        return Err(bad("it has a path after HOST:PORT"));
    }
    if u.fragment().is_some() {
        return Err(bad("it has a #fragment"));
    }
    let mut sha256 = None;
    for (k, v) in u.query_pairs() {
        if k != "sha256" {
            return Err(bad("the only parameter it may have is sha256"));
        }
        if sha256.is_some() {
            return Err(bad("sha256 is given twice"));
        }
        sha256 = Some(pin(&v).ok_or_else(|| bad("sha256 must be 64 lower-case hex digits"))?);
    }
    if u.query().is_some() && sha256.is_none() {
        return Err(bad("the only parameter it may have is sha256"));
    }
    Ok(Joined {
        url: format!("https://{host}:{port}"),
        sha256,
        access_key: name.to_string(),
        secret: secret.to_string(),
    })
}

/// `serve:https://HOST:PORT/REPO`: repository REPO (an S3 bucket name) on a joined server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServedUrl {
    /// `host:port`, normalised as in the joined server's entry (lower-case names, IPv6 in
    /// brackets and compressed).
    pub host_port: String,
    pub repo: String,
}

impl ServedUrl {
    pub fn parse(s: &str) -> Result<ServedUrl, String> {
        let bad =
            |why: &str| format!("{s:?} is not a served repository like serve:https://HOST:PORT/REPO: {why}");
        let rest = s.strip_prefix("serve:").ok_or_else(|| bad("it does not start with serve:"))?;
        let u = url::Url::parse(rest).map_err(|e| bad(&format!("not a URL ({e})")))?;
        if u.scheme() != "https" {
            return Err(bad("the scheme must be https"));
        }
        if !u.username().is_empty() || u.password().is_some() {
            return Err(bad("it names no client or secret (those come from `bakare join`)"));
        }
        if u.query().is_some() || u.fragment().is_some() {
            return Err(bad("it has a ?query or #fragment"));
        }
        let (host, port) = host_port(rest, &u).map_err(|why| bad(&why))?;
        let path = u.path().strip_prefix('/').unwrap_or(u.path());
        let repo = path.strip_suffix('/').unwrap_or(path);
        if repo.is_empty() {
            return Err(bad("no repository name after HOST:PORT/"));
        }
        if repo.contains('/') {
            return Err(bad("the repository is one name, not a path"));
        }
        if !valid_bucket(repo) {
            return Err(bad(
                "the repository name must be 3 to 63 lower-case letters, digits, '.' or '-', starting with a letter or digit, without \"..\"",
            ));
        }
        Ok(ServedUrl { host_port: format!("{host}:{port}"), repo: repo.to_string() })
    }
}

impl std::fmt::Display for ServedUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "serve:https://{}/{}", self.host_port, self.repo)
    }
}

/// The host and the port of `u`, which was parsed from `raw`; the port must be written out
/// (`Url::port` hides 443, the default, so the authority in `raw` is looked at).
fn host_port(raw: &str, u: &url::Url) -> Result<(String, u16), String> {
    let host = match u.host() {
        Some(url::Host::Domain(d)) => {
            let ok = !d.is_empty()
                && d.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                        && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                });
            if !ok {
                return Err("the host must be a DNS name, an IPv4 address or a bracketed IPv6 address".into());
            }
            d.to_string()
        }
        Some(url::Host::Ipv4(a)) => a.to_string(),
        Some(url::Host::Ipv6(a)) => format!("[{a}]"),
        None => return Err("no host".into()),
    };
    let after_scheme = raw.split_once("://").map_or(raw, |(_, r)| r);
    let authority = after_scheme.split(['/', '?', '#']).next().unwrap_or("");
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let written = hostport
        .rsplit_once(':')
        .is_some_and(|(h, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':'));
    match u.port_or_known_default() {
        Some(port) if written && port != 0 => Ok((host, port)),
        _ => Err("no port after the host (HOST:PORT)".into()),
    }
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// An S3 bucket name as `bakare serve` accepts one: `[a-z0-9][a-z0-9.-]{2,62}` without `..`.
pub fn valid_bucket(name: &str) -> bool {
    let b = name.as_bytes();
    (3..=63).contains(&b.len())
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        && !name.contains("..")
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn pin(s: &str) -> Option<[u8; 32]> {
    if !is_lower_hex(s, 64) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// What a joined server's file holds.
#[derive(serde::Serialize, serde::Deserialize)]
struct Entry {
    url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sha256: Option<String>,
    access_key: String,
    secret: String,
}

/// `$BAKARE_CONFIG_DIR`, else `bakare` in the user's configuration directory.
pub fn config_dir() -> Result<PathBuf, JoinedError> {
    match std::env::var_os("BAKARE_CONFIG_DIR") {
        Some(d) if !d.is_empty() => Ok(PathBuf::from(d)),
        _ => dirs::config_dir().map(|d| d.join("bakare")).ok_or(JoinedError::NoConfigDir),
    }
}

/// Keeps `j`, replacing what this machine kept for the same server; returns the file's path.
pub fn save(j: &Joined) -> Result<PathBuf, JoinedError> {
    save_in(&config_dir()?, j)
}

/// The server at `host_port` (`host:port`), as joined.
pub fn load(host_port: &str) -> Result<Joined, JoinedError> {
    load_in(&config_dir()?, host_port)
}

fn entry_path(config: &Path, host_port: &str) -> PathBuf {
    // host:port splits at the last colon (an IPv6 host has its own, in brackets).
    let name = match host_port.rsplit_once(':') {
        Some((host, port)) => format!("{host}_{port}.json"),
        None => format!("{host_port}.json"),
    };
    config.join("servers").join(name)
}

fn save_in(config: &Path, j: &Joined) -> Result<PathBuf, JoinedError> {
    let path = entry_path(config, j.host_port());
    let io = |source| JoinedError::Io { path: path.clone(), source };
    durable::create_private_dir_all(&config.join("servers")).map_err(io)?;
    let entry = Entry {
        url: j.url.clone(),
        sha256: j.sha256_hex(),
        access_key: j.access_key.clone(),
        secret: j.secret.clone(),
    };
    let mut json = serde_json::to_vec_pretty(&entry)
        .map_err(|e| JoinedError::Corrupt { path: path.clone(), why: e.to_string() })?;
    drop(entry);
    json.push(b'\n');
    let written = durable::replace_private(&path, &json).map_err(io);
    zeroize::Zeroize::zeroize(&mut json);
    written?;
    Ok(path)
}

fn load_in(config: &Path, host_port: &str) -> Result<Joined, JoinedError> {
    let path = entry_path(config, host_port);
    let mut bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(JoinedError::NotJoined { host_port: host_port.to_string(), path })
        }
        Err(source) => return Err(JoinedError::Io { path, source }),
    };
    let parsed = serde_json::from_slice::<Entry>(&bytes);
    zeroize::Zeroize::zeroize(&mut bytes);
    // serde_json's message names a line and column, not the text there.
    let e = parsed.map_err(|e| JoinedError::Corrupt { path: path.clone(), why: e.to_string() })?;
    let corrupt = |why: &str| JoinedError::Corrupt { path: path.clone(), why: why.to_string() };
    if e.url != format!("https://{host_port}") {
        return Err(corrupt("it names another server"));
    }
    let sha256 = match &e.sha256 {
        Some(h) => Some(pin(h).ok_or_else(|| corrupt("sha256 is not 64 lower-case hex digits"))?),
        None => None,
    };
    if !valid_name(&e.access_key) || !is_lower_hex(&e.secret, 64) {
        return Err(corrupt("its client name or secret is malformed"));
    }
    Ok(Joined { url: e.url.clone(), sha256, access_key: e.access_key.clone(), secret: e.secret.clone() })
}

/// A friend's server this machine paired with (`bakare peers pair NAME`), kept as
/// `<config>/peers/<NAME>.json` beside the server's credential in `servers/`;
/// `--repo peer:NAME` is its repository, `serve:URL/REPO`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Peer {
    /// The name it announces.
    pub name: String,
    /// `https://host:port`, as in the server's entry.
    pub url: String,
    /// The repository the server gave this machine.
    pub repo: String,
    /// Its certificate's SHA-256, lower-case hex, as compared when pairing.
    pub sha256: String,
}

impl Peer {
    /// `serve:https://host:port/repo`.
    pub fn location(&self) -> String {
        format!("serve:{}/{}", self.url, self.repo)
    }
}

fn peer_path(config: &Path, name: &str) -> Result<PathBuf, JoinedError> {
    if !valid_name(name) {
        return Err(JoinedError::Corrupt {
            path: config.join("peers"),
            why: format!("{name:?} is not a peer's name: 1 to 64 letters, digits, '_' or '-'"),
        });
    }
    Ok(config.join("peers").join(format!("{name}.json")))
}

/// Keeps `p` (replacing an earlier pairing with the same name); returns the file's path.
pub fn save_peer(p: &Peer) -> Result<PathBuf, JoinedError> {
    let config = config_dir()?;
    let path = peer_path(&config, &p.name)?;
    let io = |source| JoinedError::Io { path: path.clone(), source };
    durable::create_private_dir_all(&config.join("peers")).map_err(io)?;
    let mut json = serde_json::to_vec_pretty(p)
        .map_err(|e| JoinedError::Corrupt { path: path.clone(), why: e.to_string() })?;
    json.push(b'\n');
    durable::replace_private(&path, &json).map_err(io)?;
    Ok(path)
}

/// The peer paired as `name`.
pub fn load_peer(name: &str) -> Result<Peer, JoinedError> {
    let config = config_dir()?;
    let path = peer_path(&config, name)?;
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(JoinedError::NotPaired { name: name.to_string() })
        }
        Err(source) => return Err(JoinedError::Io { path, source }),
    };
    let corrupt = |why: String| JoinedError::Corrupt { path: path.clone(), why };
    let p: Peer = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    let served = ServedUrl::parse(&p.location()).map_err(corrupt)?;
    if p.name != name || pin(&p.sha256).is_none() || format!("https://{}", served.host_port) != p.url {
        return Err(corrupt("its name, address or sha256 is malformed".into()));
    }
    Ok(p)
}

/// Every peer this machine paired with, by name; a damaged entry is an error naming it.
pub fn peers() -> Result<Vec<Peer>, JoinedError> {
    let dir = config_dir()?.join("peers");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(JoinedError::Io { path: dir, source }),
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e.map_err(|source| JoinedError::Io { path: dir.clone(), source })?;
        let file = e.file_name();
        let Some(name) = file.to_str().and_then(|f| f.strip_suffix(".json")) else { continue };
        if valid_name(name) {
            out.push(load_peer(name)?);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const PIN: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

    fn invitation(name: &str, secret: &str, hostport: &str, query: &str) -> String {
        format!("bakare-join:https://{name}:{secret}@{hostport}/{query}")
    }

    #[test]
    fn invitations_parse() {
        let j = parse_invitation(&invitation(
            "laptop",
            SECRET,
            "backup.example.com:8443",
            &format!("?sha256={PIN}"),
        ))
        .unwrap();
        assert_eq!(j.url, "https://backup.example.com:8443");
        assert_eq!(j.host_port(), "backup.example.com:8443");
        assert_eq!(j.access_key, "laptop");
        assert_eq!(j.secret, SECRET);
        assert_eq!(j.sha256_hex().as_deref(), Some(PIN));
        // No pin: a CA-signed certificate; IPv4; no trailing slash; port 443 written out.
        let j = parse_invitation(&format!("bakare-join:https://a_b-C9:{SECRET}@192.0.2.7:443")).unwrap();
        assert_eq!((j.url.as_str(), j.sha256), ("https://192.0.2.7:443", None));
        // IPv6, normalised; a DNS name, lower-cased.
        let j = parse_invitation(&invitation("n", SECRET, "[2001:DB8:0:0::1]:9000", "")).unwrap();
        assert_eq!(j.host_port(), "[2001:db8::1]:9000");
        let j = parse_invitation(&invitation("n", SECRET, "Backup.Example.COM:1", "")).unwrap();
        assert_eq!(j.host_port(), "backup.example.com:1");
        // Surrounding blanks (a pasted line) are fine.
        assert!(parse_invitation(&format!("  {}\n", invitation("n", SECRET, "h:1", ""))).is_ok());
        assert!(format!("{j:?}").contains("[redacted]") && !format!("{j:?}").contains(SECRET));
    }

    #[test]
    fn bad_invitations_say_why_and_never_repeat_the_secret() {
        let pin = format!("?sha256={PIN}");
        let long = "x".repeat(65);
        let cases: Vec<(String, &str)> = vec![
            (format!("https://n:{SECRET}@h:1/"), "bakare-join:"),
            (format!("bakare-join:http://n:{SECRET}@h:1/{pin}"), "https"),
            (format!("bakare-join:ftp://n:{SECRET}@h:1/"), "https"),
            (invitation("n", SECRET, "h", &pin), "port"),
            (invitation("n", SECRET, "h:", &pin), "port"),
            (invitation("n", SECRET, "[::1]", &pin), "port"),
            (invitation("n", &SECRET[1..], "h:1", &pin), "secret"),
            (invitation("n", &SECRET.to_uppercase(), "h:1", &pin), "secret"),
            (invitation("n", &format!("{SECRET}0"), "h:1", &pin), "secret"),
            (format!("bakare-join:https://n@h:1/{pin}"), "secret"),
            (invitation("", SECRET, "h:1", &pin), "name"),
            (invitation("a.b", SECRET, "h:1", &pin), "name"),
            (invitation("a%20b", SECRET, "h:1", &pin), "name"),
            (invitation(&long, SECRET, "h:1", &pin), "name"),
            (invitation("n", SECRET, "h:1", "?sha256=abc"), "sha256"),
            (invitation("n", SECRET, "h:1", &format!("?sha256={}", PIN.to_uppercase())), "sha256"),
            (invitation("n", SECRET, "h:1", &format!("?sha256={PIN}0")), "sha256"),
            (invitation("n", SECRET, "h:1", "?sha256="), "sha256"),
            (invitation("n", SECRET, "h:1", &format!("{pin}&sha256={PIN}")), "twice"),
            (invitation("n", SECRET, "h:1", &format!("{pin}&other=1")), "parameter"),
            (invitation("n", SECRET, "h:1", "?"), "parameter"),
            (invitation("n", SECRET, "h:1", "repo"), "path"),
            (invitation("n", SECRET, "h:1", "#x"), "fragment"),
            (invitation("n", SECRET, "h_x:1", ""), "host"),
            (invitation("n", SECRET, "h:99999", ""), "URL"),
            (String::new(), "bakare-join:"),
        ];
        for (line, what) in cases {
            let e = parse_invitation(&line).expect_err(&line);
            assert!(e.contains(what), "{line}: {e} does not name {what}");
            assert!(
                !e.contains(SECRET) && !e.contains(&SECRET[1..]) && !e.contains(&SECRET.to_uppercase()),
                "{e}"
            );
        }
    }

    #[test]
    fn served_urls() {
        let u = ServedUrl::parse("serve:https://Backup.Example.com:8443/photos").unwrap();
        assert_eq!(u, ServedUrl { host_port: "backup.example.com:8443".into(), repo: "photos".into() });
        assert_eq!(u.to_string(), "serve:https://backup.example.com:8443/photos");
        let u = ServedUrl::parse("serve:https://[::1]:9000/a.b-c/").unwrap();
        assert_eq!((u.host_port.as_str(), u.repo.as_str()), ("[::1]:9000", "a.b-c"));
        for (bad, what) in [
            ("https://h:1/r1", "serve:"),
            ("serve:http://h:1/r1", "https"),
            ("serve:https://h/r1", "port"),
            ("serve:https://h:1/", "no repository"),
            ("serve:https://h:1", "no repository"),
            ("serve:https://h:1/a/b", "one name"),
            ("serve:https://h:1/Photos", "lower-case"),
            ("serve:https://h:1/x", "3 to 63"),
            ("serve:https://h:1/-ab", "starting"),
            ("serve:https://n:s@h:1/ab", "client"),
            ("serve:https://h:1/ab?x=1", "query"),
        ] {
            let e = ServedUrl::parse(bad).expect_err(bad);
            assert!(e.contains(what), "{bad}: {e} does not name {what}");
        }
        assert!(ServedUrl::parse(&format!("serve:https://h:1/{}", "a".repeat(63))).is_ok());
        assert!(ServedUrl::parse(&format!("serve:https://h:1/{}", "a".repeat(64))).is_err());
    }

    #[test]
    fn saved_and_loaded_privately() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let j =
            parse_invitation(&invitation("laptop", SECRET, "[::1]:8443", &format!("?sha256={PIN}"))).unwrap();
        let path = save_in(dir.path(), &j).unwrap();
        assert_eq!(path, dir.path().join("servers/[::1]_8443.json"));
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let servers = std::fs::metadata(dir.path().join("servers")).unwrap();
        assert_eq!(servers.permissions().mode() & 0o777, 0o700);
        assert_eq!(load_in(dir.path(), "[::1]:8443").unwrap(), j);
        // Joining again replaces the entry (a new certificate, a new secret).
        let again = parse_invitation(&invitation("laptop", &"e".repeat(64), "[::1]:8443", "")).unwrap();
        save_in(dir.path(), &again).unwrap();
        let loaded = load_in(dir.path(), "[::1]:8443").unwrap();
        assert_eq!((loaded.sha256, loaded.secret.as_str()), (None, "e".repeat(64).as_str()));
        assert_eq!(std::fs::read_dir(dir.path().join("servers")).unwrap().count(), 1);
        // A server never joined: the error says what to do.
        let e = load_in(dir.path(), "other.example:1").unwrap_err().to_string();
        assert!(e.contains("bakare join INVITATION") && e.contains("other.example:1"), "{e}");
        // An entry that was edited into nonsense is refused without quoting it.
        std::fs::write(&path, format!("{{\"url\": \"https://[::1]:8443\", \"secret\": \"{SECRET}\"}}"))
            .unwrap();
        let e = load_in(dir.path(), "[::1]:8443").unwrap_err().to_string();
        assert!(e.contains("not a joined server's entry") && !e.contains(SECRET), "{e}");
    }
}
