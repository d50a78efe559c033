//! The TXT record of a `_bakare._tcp` service: what an announcement says about its node, and the
//! strict decoding of what other nodes say. Everything decoded here came from the network and
//! nothing about it is trusted: lengths are bounded, every value is checked, and anything not
//! understood makes the whole entry rejected rather than half used.

use crate::{Error, Result, Role};

/// The version of the TXT keys this crate writes and understands (`v=1`).
pub const VERSION: u32 = 1;

/// At most this many TXT entries are looked at; a record with more is rejected. Ours has four.
const MAX_ENTRIES: usize = 32;

/// What the TXT record of an announcement says, decoded and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Txt {
    /// `v`: the version of the keys, always [`VERSION`] once decoded.
    pub version: u32,
    /// `roles`: what the node does, in the canonical order (persister first), no duplicates.
    pub roles: Vec<Role>,
    /// `sha256`: the SHA-256 of the node's TLS certificate, 64 lower-case hex digits.
    pub sha256: Option<String>,
    /// `free`: bytes a new friend may store on the node.
    pub free: Option<u64>,
}

/// Whether `name` can name a node: 1 to 63 of `[A-Za-z0-9-]` (one DNS label, nothing to
/// escape, so it is both the DNS-SD instance name and the mDNS host name).
pub fn valid_name(name: &str) -> bool {
    (1..=63).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Whether `s` is a SHA-256 as certificates are pinned: exactly 64 lower-case hex digits.
pub fn valid_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `roles` as they are written in TXT (`persister`, `publisher` or `persister,publisher`):
/// canonical order, duplicates dropped. Empty when `roles` is.
pub fn roles_text(roles: &[Role]) -> String {
    let mut out = Vec::new();
    for r in [Role::Persister, Role::Publisher] {
        if roles.contains(&r) {
            out.push(r.as_str());
        }
    }
    out.join(",")
}

/// The TXT entries (key, value) announcing `roles`, `sha256` and `free`, after checking them.
pub fn encode(roles: &[Role], sha256: Option<&str>, free: Option<u64>) -> Result<Vec<(String, String)>> {
    if roles.is_empty() {
        return Err(Error::Invalid("an announcement needs at least one role".into()));
    }
    let mut txt = vec![("v".to_string(), VERSION.to_string()), ("roles".to_string(), roles_text(roles))];
    if let Some(s) = sha256 {
        if !valid_sha256(s) {
            return Err(Error::Invalid(format!(
                "certificate SHA-256 {} is not 64 lower-case hex digits",
                shown(s.as_bytes())
            )));
        }
        txt.push(("sha256".into(), s.to_string()));
    }
    if let Some(f) = free {
        txt.push(("free".into(), f.to_string()));
    }
    Ok(txt)
}

/// Decodes the TXT entries (key, value; no value for a key without `=`) of a discovered
/// service. Keys are compared ignoring ASCII case (RFC 6763 §6.4); unknown keys are ignored,
/// so that later versions may add some; a known key given twice, a missing `v` or `roles`, a
/// version other than 1, an unknown or repeated role, a bad `sha256` or `free` are errors.
pub fn decode<'a, I>(entries: I) -> Result<Txt>
where
    I: IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
{
    let (mut v, mut roles, mut sha256, mut free) = (None, None, None, None);
    for (n, (key, value)) in entries.into_iter().enumerate() {
        if n >= MAX_ENTRIES {
            return Err(Error::Invalid(format!("more than {MAX_ENTRIES} TXT entries")));
        }
        let slot = if key.eq_ignore_ascii_case("v") {
            &mut v
        } else if key.eq_ignore_ascii_case("roles") {
            &mut roles
        } else if key.eq_ignore_ascii_case("sha256") {
            &mut sha256
        } else if key.eq_ignore_ascii_case("free") {
            &mut free
        } else {
            continue;
        };
        if slot.is_some() {
            return Err(Error::Invalid(format!("TXT key {} given twice", shown(key.as_bytes()))));
        }
        let value =
            value.ok_or_else(|| Error::Invalid(format!("TXT key {} has no value", shown(key.as_bytes()))))?;
        *slot = Some(value);
    }
    let v = v.ok_or_else(|| Error::Invalid("no version (TXT key v)".into()))?;
    let version = decimal(v, 10)
        .filter(|&n| n == u64::from(VERSION))
        .ok_or_else(|| Error::Invalid(format!("version {} is not {VERSION} (TXT key v)", shown(v))))?;
    let roles = decode_roles(roles.ok_or_else(|| Error::Invalid("no roles (TXT key roles)".into()))?)?;
    let sha256 = match sha256 {
        None => None,
        Some(s) => match std::str::from_utf8(s) {
            Ok(s) if valid_sha256(s) => Some(s.to_string()),
            _ => {
                return Err(Error::Invalid(format!(
                    "certificate SHA-256 {} is not 64 lower-case hex digits",
                    shown(s)
                )))
            }
        },
    };
    let free = match free {
        None => None,
        Some(f) => Some(
            decimal(f, 20)
                .ok_or_else(|| Error::Invalid(format!("free space {} is not a number of bytes", shown(f))))?,
        ),
    };
    Ok(Txt { version: version as u32, roles, sha256, free })
}

/// `s` as a decimal u64 of at most `max_digits` ASCII digits (no sign, no spaces), or None.
fn decimal(s: &[u8], max_digits: usize) -> Option<u64> {
    if s.is_empty() || s.len() > max_digits || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// The value of `roles`: a comma-separated list of known roles, none repeated, at least one.
fn decode_roles(s: &[u8]) -> Result<Vec<Role>> {
    let bad = || Error::Invalid(format!("roles {} are not persister and/or publisher", shown(s)));
    // "persister,publisher" is the longest valid value.
    if s.is_empty() || s.len() > 32 {
        return Err(bad());
    }
    let mut roles = Vec::new();
    for part in s.split(|&b| b == b',') {
        let role = match part {
            b"persister" => Role::Persister,
            b"publisher" => Role::Publisher,
            _ => return Err(bad()),
        };
        if roles.contains(&role) {
            return Err(bad());
        }
        roles.push(role);
    }
    roles.sort_by_key(|r| matches!(r, Role::Publisher));
    Ok(roles)
}

/// Bytes from the network as they may be shown in a message: escaped, and cut at 64 bytes so
/// that a hostile peer cannot fill a terminal or a log.
pub fn shown(s: &[u8]) -> String {
    const MAX: usize = 64;
    let mut out: String = s.iter().take(MAX).flat_map(|b| b.escape_ascii()).map(char::from).collect();
    if s.len() > MAX {
        out.push_str(&format!("...({} bytes)", s.len()));
    }
    format!("\"{out}\"")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn dec(entries: &[(&str, Option<&str>)]) -> Result<Txt> {
        decode(entries.iter().map(|(k, v)| (*k, v.map(str::as_bytes))))
    }

    fn roundtrip(roles: &[Role], sha: Option<&str>, free: Option<u64>) -> Txt {
        let txt = encode(roles, sha, free).unwrap();
        decode(txt.iter().map(|(k, v)| (k.as_str(), Some(v.as_bytes())))).unwrap()
    }

    #[test]
    fn encode_then_decode_gives_back_the_announcement() {
        let t = roundtrip(&[Role::Persister], Some(SHA), Some(u64::MAX));
        assert_eq!(
            t,
            Txt { version: 1, roles: vec![Role::Persister], sha256: Some(SHA.into()), free: Some(u64::MAX) }
        );
        let t = roundtrip(&[Role::Publisher], None, None);
        assert_eq!(t, Txt { version: 1, roles: vec![Role::Publisher], sha256: None, free: None });
        // Canonical order and no duplicates, whatever the caller gave.
        let t = roundtrip(&[Role::Publisher, Role::Persister, Role::Publisher], None, Some(0));
        assert_eq!(t.roles, vec![Role::Persister, Role::Publisher]);
        assert_eq!(t.free, Some(0));
        let txt = encode(&[Role::Persister, Role::Publisher], Some(SHA), Some(42)).unwrap();
        let txt: Vec<(&str, &str)> = txt.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(txt, vec![("v", "1"), ("roles", "persister,publisher"), ("sha256", SHA), ("free", "42")]);
    }

    #[test]
    fn encode_refuses_what_it_could_not_decode() {
        assert!(encode(&[], None, None).is_err());
        assert!(encode(&[Role::Persister], Some(&SHA.to_uppercase()), None).is_err());
        assert!(encode(&[Role::Persister], Some(&SHA[1..]), None).is_err());
    }

    #[test]
    fn decoding_tolerates_case_in_keys_and_unknown_keys() {
        let t = dec(&[("V", Some("1")), ("Roles", Some("publisher")), ("later", None), ("x", Some("y"))])
            .unwrap();
        assert_eq!(t.roles, vec![Role::Publisher]);
    }

    #[test]
    fn hostile_txt_is_rejected() {
        let long = "9".repeat(300);
        let huge = "a".repeat(100_000);
        let (not_hex, upper) = (SHA.replace('a', "g"), SHA.to_uppercase());
        let cases: Vec<Vec<(&str, Option<&str>)>> = vec![
            // Missing or wrong version.
            vec![("roles", Some("persister"))],
            vec![("v", Some("2")), ("roles", Some("persister"))],
            vec![("v", Some("01x")), ("roles", Some("persister"))],
            vec![("v", Some("")), ("roles", Some("persister"))],
            vec![("v", None), ("roles", Some("persister"))],
            vec![("v", Some(&long)), ("roles", Some("persister"))],
            vec![("v", Some("-1")), ("roles", Some("persister"))],
            vec![("v", Some("1")), ("v", Some("1")), ("roles", Some("persister"))],
            // Roles.
            vec![("v", Some("1"))],
            vec![("v", Some("1")), ("roles", Some(""))],
            vec![("v", Some("1")), ("roles", Some("admin"))],
            vec![("v", Some("1")), ("roles", Some("persister,"))],
            vec![("v", Some("1")), ("roles", Some("persister,persister"))],
            vec![("v", Some("1")), ("roles", Some("Persister"))],
            vec![("v", Some("1")), ("roles", Some(&huge))],
            // sha256.
            vec![("v", Some("1")), ("roles", Some("persister")), ("sha256", Some(&SHA[..63]))],
            vec![("v", Some("1")), ("roles", Some("persister")), ("sha256", Some(&not_hex))],
            vec![("v", Some("1")), ("roles", Some("persister")), ("sha256", Some(&upper))],
            vec![("v", Some("1")), ("roles", Some("persister")), ("sha256", Some(&huge))],
            vec![("v", Some("1")), ("roles", Some("persister")), ("sha256", None)],
            // free.
            vec![("v", Some("1")), ("roles", Some("persister")), ("free", Some("-1"))],
            vec![("v", Some("1")), ("roles", Some("persister")), ("free", Some("+1"))],
            vec![("v", Some("1")), ("roles", Some("persister")), ("free", Some("18446744073709551616"))],
            vec![("v", Some("1")), ("roles", Some("persister")), ("free", Some(&long))],
            vec![("v", Some("1")), ("roles", Some("persister")), ("free", Some(" 1"))],
            vec![("v", Some("1")), ("roles", Some("persister")), ("free", Some("1e9"))],
            vec![("v", Some("1")), ("roles", Some("persister")), ("free", Some(""))],
        ];
        for case in &cases {
            let e = dec(case).expect_err(&format!("{case:?} was accepted"));
            // The message stays short whatever the peer sent.
            assert!(e.to_string().len() < 200, "{e}");
        }
        let many: Vec<(&str, Option<&str>)> = [("v", Some("1")), ("roles", Some("persister"))]
            .into_iter()
            .chain((0..40).map(|_| ("k", None)))
            .collect();
        assert!(dec(&many).is_err());
        // Not UTF-8 at all.
        let bad: Vec<(&str, Option<&[u8]>)> =
            vec![("v", Some(b"1")), ("roles", Some(b"persister")), ("sha256", Some(&[0xff; 64]))];
        assert!(decode(bad).is_err());
    }

    #[test]
    fn names() {
        assert!(valid_name("alice-laptop-2"));
        assert!(valid_name(&"a".repeat(63)));
        for bad in ["", "a.b", "a b", "a\\b", "é", "a_b", "a\0"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert!(!valid_name(&"a".repeat(64)));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_entries_never_panics(
            entries in proptest::collection::vec(
                ("(?i)v|roles|sha256|free|[a-z]{0,8}", proptest::option::of(proptest::collection::vec(any::<u8>(), 0..80))),
                0..40,
            )
        ) {
            let t = decode(entries.iter().map(|(k, v)| (k.as_str(), v.as_deref())));
            if let Ok(t) = t {
                prop_assert_eq!(t.version, 1);
                prop_assert!(!t.roles.is_empty());
                prop_assert!(t.sha256.as_deref().is_none_or(valid_sha256));
            }
        }

        #[test]
        fn what_is_encoded_decodes_the_same(
            roles in proptest::sample::subsequence(vec![Role::Persister, Role::Publisher], 1..=2),
            sha in proptest::option::of("[0-9a-f]{64}"),
            free in proptest::option::of(any::<u64>()),
        ) {
            let t = roundtrip(&roles, sha.as_deref(), free);
            prop_assert_eq!(t, Txt { version: 1, roles, sha256: sha, free });
        }
    }
}
