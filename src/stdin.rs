//! `run --stdin` and `run --stdin-from-command`: standard input, or a command's standard output,
//! as the stream the engine backs up as one file at the snapshot root (`engine::backup::Stream`).
use std::ffi::OsString;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use engine::backup::{Stream, StreamName};

use crate::RunArgs;

/// restic's default name for the file.
const DEFAULT_NAME: &str = "stdin";

/// What `run` was asked to stream, before anything is started.
pub struct StreamSpec {
    name: StreamName,
    /// The command and its arguments; None for standard input.
    command: Option<Vec<OsString>>,
}

/// The stream `args` ask for, if any (the command's words are taken from the positionals).
pub fn spec(args: &mut RunArgs) -> Result<Option<StreamSpec>> {
    if !args.stdin && !args.stdin_from_command {
        if args.stdin_name.is_some() {
            bail!("--stdin-name names the file of --stdin or --stdin-from-command; neither was given");
        }
        return Ok(None);
    }
    let name = args.stdin_name.take().unwrap_or_else(|| DEFAULT_NAME.into());
    let name = StreamName::new(&name).context("--stdin-name")?;
    let command = args
        .stdin_from_command
        .then(|| std::mem::take(&mut args.paths).into_iter().map(|p| p.into_os_string()).collect());
    Ok(Some(StreamSpec { name, command }))
}

impl StreamSpec {
    /// Opens the input: standard input, or the pipe from the command, started here.
    pub fn start(self) -> Result<Stream> {
        let StreamSpec { name, command } = self;
        let Some(words) = command else {
            let fd = std::io::stdin().as_fd().try_clone_to_owned().context("duplicating standard input")?;
            return Ok(Stream { name, input: File::from(fd), verdict: Box::new(|| Ok(())) });
        };
        let Some((program, rest)) = words.split_first() else {
            bail!("--stdin-from-command: no command given (put it after `--`)");
        };
        // Only the program is named in messages: its arguments may hold a password.
        let shown = program.to_string_lossy().into_owned();
        // bakare's own secrets are not the command's (its other variables, such as cloud
        // credentials, may be what it needs).
        let mut child = Command::new(program)
            .args(rest)
            .env_remove("BAKARE_PASSPHRASE")
            .env_remove("BAKARE_NEW_PASSPHRASE")
            .stdin(Stdio::inherit())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("--stdin-from-command: cannot run `{shown}`"))?;
        let Some(out) = child.stdout.take() else { bail!("--stdin-from-command: no pipe from `{shown}`") };
        let verdict = Box::new(move || match child.wait() {
            Ok(st) if st.success() => Ok(()),
            Ok(st) => Err(format!("--stdin-from-command: `{shown}` failed ({st})")),
            Err(e) => Err(format!("--stdin-from-command: cannot wait for `{shown}`: {e}")),
        });
        Ok(Stream { name, input: File::from(OwnedFd::from(out)), verdict })
    }
}
