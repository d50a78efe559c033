//! A source whose files misbehave on cue, for real: a "vanishing" file is deleted just before
//! it is opened, a "changing" file is appended to while it is read, and an EIO is returned by
//! the read that covers a given offset. The faults work the same on the io_uring and pool paths
//! because the read stage routes every open and every read result through the `Source`.
//!
//! Rules come from `BAKARE_FAULTS`, separated by `;`, each matching paths by suffix:
//! `vanish:NAME`, `change:NAME`, `eio:NAME@OFFSET`.
#![forbid(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Mutex;

use ::io::{LocalSource, Source};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    Vanish,
    Change,
    Eio { offset: u64 },
}

#[derive(Default)]
pub struct FaultySource {
    inner: LocalSource,
    rules: Vec<(Vec<u8>, Fault)>,
    /// Files already changed (each is changed once).
    changed: Mutex<Vec<Vec<u8>>>,
}

impl FaultySource {
    pub fn new(rules: Vec<(Vec<u8>, Fault)>) -> Self {
        FaultySource { rules, ..Default::default() }
    }

    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut rules = Vec::new();
        for rule in spec.split(';').filter(|r| !r.is_empty()) {
            let (kind, arg) = rule.split_once(':').ok_or(format!("fault rule {rule:?} has no ':'"))?;
            let (name, fault) = match kind {
                "vanish" => (arg, Fault::Vanish),
                "change" => (arg, Fault::Change),
                "eio" => {
                    let (name, off) =
                        arg.rsplit_once('@').ok_or(format!("{rule:?}: eio needs NAME@OFFSET"))?;
                    let offset = off.parse().map_err(|_| format!("{rule:?}: bad offset"))?;
                    (name, Fault::Eio { offset })
                }
                _ => return Err(format!("unknown fault {kind:?}")),
            };
            rules.push((name.as_bytes().to_vec(), fault));
        }
        Ok(FaultySource::new(rules))
    }

    pub fn from_env() -> Result<Self, String> {
        match std::env::var("BAKARE_FAULTS") {
            Ok(spec) => Self::parse(&spec),
            Err(_) => Ok(FaultySource::default()),
        }
    }

    fn fault(&self, path: &Path) -> Option<&Fault> {
        let p = path.as_os_str().as_bytes();
        self.rules.iter().find(|(suffix, _)| p.ends_with(suffix)).map(|(_, f)| f)
    }
}

impl Source for FaultySource {
    fn open(&self, path: &Path) -> io::Result<File> {
        if self.fault(path) == Some(&Fault::Vanish) {
            std::fs::remove_file(path)?;
        }
        self.inner.open(path)
    }

    fn after_read(
        &self,
        path: &Path,
        offset: u64,
        buf: &mut [u8],
        res: io::Result<usize>,
    ) -> io::Result<usize> {
        match (self.fault(path), res) {
            (Some(Fault::Eio { offset: at }), Ok(n)) if offset + n as u64 > *at => {
                Err(io::Error::from_raw_os_error(libc::EIO))
            }
            (Some(Fault::Change), Ok(n)) => {
                let key = path.as_os_str().as_bytes().to_vec();
                let mut done = self.changed.lock().unwrap_or_else(|p| p.into_inner());
                if !done.contains(&key) {
                    done.push(key);
                    let mut f = OpenOptions::new().append(true).open(path)?;
                    f.write_all(b"appended while the backup was reading")?;
                }
                Ok(n)
            }
            (_, res) => self.inner.after_read(path, offset, buf, res),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rules() {
        let s = FaultySource::parse("vanish:a.txt;eio:big@4096;change:c").unwrap();
        assert_eq!(s.fault(Path::new("/x/a.txt")), Some(&Fault::Vanish));
        assert_eq!(s.fault(Path::new("/x/big")), Some(&Fault::Eio { offset: 4096 }));
        assert_eq!(s.fault(Path::new("/x/other")), None);
        assert!(FaultySource::parse("boom:x").is_err());
        assert!(FaultySource::parse("eio:x").is_err());
    }
}
