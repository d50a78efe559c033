//! Where passphrases come from: the environment (`BAKARE_PASSPHRASE`), a command
//! (`--passphrase-command`, whose first line of output is the passphrase), or a prompt on the
//! terminal (rpassword: no echo). Scripts without a terminal get a clear error, never a hang.
use std::io::IsTerminal;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use engine::secrecy::{ExposeSecret, SecretString};

/// The passphrase of an existing protected key file.
pub fn existing(command: Option<&str>, path: &Path) -> Result<SecretString> {
    if let Some(p) = from_env_or_command("BAKARE_PASSPHRASE", command)? {
        return Ok(p);
    }
    if std::io::stdin().is_terminal() {
        let p = rpassword::prompt_password(format!("passphrase for {}: ", path.display()))
            .context("reading the passphrase")?;
        return Ok(SecretString::from(p));
    }
    bail!(
        "{} is protected by a passphrase: set BAKARE_PASSPHRASE, give --passphrase-command, or run on a terminal",
        path.display()
    )
}

/// A new passphrase, for `init --passphrase`: the same sources, asked twice on a terminal.
pub fn new(command: Option<&str>) -> Result<SecretString> {
    new_from("BAKARE_PASSPHRASE", command)
}

/// A new passphrase from `var`, `command`, or asked twice on a terminal.
pub fn new_from(var: &str, command: Option<&str>) -> Result<SecretString> {
    if let Some(p) = from_env_or_command(var, command)? {
        return Ok(p);
    }
    if !std::io::stdin().is_terminal() {
        bail!("no passphrase given: set {var}, give --passphrase-command, or run on a terminal");
    }
    let a = rpassword::prompt_password("new passphrase: ").context("reading the passphrase")?;
    let b = rpassword::prompt_password("the same again: ").context("reading the passphrase")?;
    if a != b {
        bail!("the two passphrases differ");
    }
    checked(SecretString::from(a))
}

/// A command given explicitly wins over the variable. Error messages never quote the command:
/// it may hold the passphrase itself.
fn from_env_or_command(var: &str, command: Option<&str>) -> Result<Option<SecretString>> {
    if let Some(cmd) = command {
        let out = Command::new("/bin/sh")
            .arg("-c")
            .arg(cmd)
            .stdin(Stdio::inherit())
            .stderr(Stdio::inherit())
            .output()
            .context("running the passphrase command")?;
        let stdout = zeroize::Zeroizing::new(out.stdout);
        if !out.status.success() {
            bail!("the passphrase command failed ({})", out.status);
        }
        let text =
            std::str::from_utf8(&stdout).context("the passphrase command printed something not UTF-8")?;
        let line = text.lines().next().unwrap_or("").to_string();
        return checked(SecretString::from(line)).map(Some);
    }
    match std::env::var_os(var) {
        Some(v) => {
            let v = v.into_string().map_err(|_| anyhow::anyhow!("{var} is not valid UTF-8"))?;
            checked(SecretString::from(v)).map(Some)
        }
        None => Ok(None),
    }
}

fn checked(p: SecretString) -> Result<SecretString> {
    if p.expose_secret().is_empty() {
        bail!("an empty passphrase protects nothing");
    }
    Ok(p)
}
