//! `join`: keep a `bakare serve` server's invitation on this machine, so that
//! `--repo serve:https://HOST:PORT/REPO` finds its credentials and its certificate's pin
//! (io::joined). `init --join` does the same before it creates the repository.
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde_json::json;

use crate::output;

#[derive(Args, Debug)]
pub struct JoinArgs {
    /// The invitation, one line made on the server by `bakare serve --add-client NAME`:
    /// bakare-join:https://NAME:SECRET@HOST:PORT/?sha256=HEX. Without it, it is read from
    /// BAKARE_INVITATION, which keeps its secret out of the shell's history
    #[arg(value_name = "INVITATION", env = "BAKARE_INVITATION", hide_env_values = true)]
    pub invitation: String,
}

/// Parses and keeps the invitation; says what was joined and how to use it.
pub fn join_cmd(args: &JoinArgs, json: bool) -> Result<u8> {
    let joined = io::joined::parse_invitation(&args.invitation).map_err(|e| anyhow!(e))?;
    let (path, msg) = keep(&joined)?;
    if json {
        let v = json!({
            "joined": joined.url,
            "sha256": joined.sha256_hex(),
            "client": joined.access_key,
            "file": path.display().to_string(),
        });
        println!("{v}");
    } else if !output::quiet() {
        println!("{msg}");
    }
    Ok(0)
}

/// For `init --join`: the invitation must be for the server that `repo` names.
pub fn join_for(invitation: &str, repo: &engine::repo::Location, json: bool) -> Result<()> {
    let engine::repo::Location::Serve(url) = repo else {
        bail!("--join needs --repo serve:https://HOST:PORT/REPO, a repository on the server that made the invitation");
    };
    let served = io::ServedUrl::parse(url).map_err(|e| anyhow!(e))?;
    let joined = io::joined::parse_invitation(invitation).map_err(|e| anyhow!(e))?;
    if joined.host_port() != served.host_port {
        bail!(
            "the invitation is for the server at {}, but --repo names {}: use --repo serve:{}/REPO",
            joined.host_port(),
            served.host_port,
            joined.url
        );
    }
    let (_, msg) = keep(&joined)?;
    // stdout is init's own report (one JSON object with --json).
    if json {
        eprintln!("{msg}");
    } else if !output::quiet() {
        println!("{msg}");
    }
    Ok(())
}

/// Saves `joined`; returns where, and the line that says what was joined.
fn keep(joined: &io::Joined) -> Result<(std::path::PathBuf, String)> {
    let path = io::joined::save(joined).context("keeping the invitation")?;
    let certificate = match joined.sha256_hex() {
        Some(h) => format!("certificate sha256 {h}"),
        None => "certificate signed by a public CA".to_string(),
    };
    let msg = format!("joined {} ({certificate}); use --repo serve:{}/<name>", joined.url, joined.url);
    Ok((path, msg))
}
