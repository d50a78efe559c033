//! `completions` and `man`: shell completion scripts and man pages, generated from the command
//! line's own definition. They open no repository, read no key and handle no signals, so they
//! work anywhere (a package build, a machine with no repository yet).
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, CommandFactory};
use clap_complete::Shell;
use serde_json::json;

use crate::output::Out;
use crate::Cli;

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete for
    #[arg(value_enum)]
    pub shell: Shell,
}

#[derive(Args, Debug)]
pub struct ManArgs {
    /// Directory for the pages (created if missing), e.g. ~/.local/share/man/man1
    #[arg(value_name = "DIR", value_hint = clap::ValueHint::DirPath)]
    pub dir: PathBuf,
}

/// Prints the completion script for `args.shell` to stdout (a closed pipe ends it quietly).
pub fn completions(args: &CompletionsArgs) -> Result<u8> {
    let mut cmd = Cli::command();
    let name = cmd.get_name().to_string();
    // Into memory first: clap_complete panics on a failed write.
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, name, &mut script);
    let mut out = Out::new();
    out.bytes(&script).context("writing the completion script")?;
    out.finish().context("writing the completion script")?;
    Ok(0)
}

/// Writes one man page per command and subcommand into `args.dir`: `bakare.1`, `bakare-run.1`,
/// `bakare-key-export.1`... (the `help` subcommand has none: the pages are the help).
pub fn man_pages(args: &ManArgs, json: bool) -> Result<u8> {
    prepare_dir(&args.dir)?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    // Every page's footer names the program and version, not just the command's own name.
    let source = format!("{} {}", cmd.get_name(), cmd.get_version().unwrap_or_default());
    let mut written = Vec::new();
    write_pages(cmd, &source, &args.dir, &mut written)?;
    report(&args.dir, &written, json)?;
    Ok(0)
}

/// Creates `dir` if it is missing; refuses anything in its place that is not a directory.
fn prepare_dir(dir: &Path) -> Result<()> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => bail!("{} exists and is not a directory: not writing man pages there", dir.display()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", dir.display())),
    }
}

/// Writes the page of `cmd` (built, so subcommands carry their full names), then those of
/// its visible subcommands, depth first; appends each file written to `written`.
fn write_pages(cmd: clap::Command, source: &str, dir: &Path, written: &mut Vec<PathBuf>) -> Result<()> {
    let subcommands: Vec<_> = cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned().collect();
    let man = clap_mangen::Man::new(cmd).source(source);
    let path = dir.join(man.get_filename());
    let mut page = Vec::new();
    man.render(&mut page).with_context(|| format!("rendering {}", path.display()))?;
    fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
    written.push(path);
    for sub in subcommands {
        write_pages(sub, source, dir, written)?;
    }
    Ok(())
}

/// Says how many pages went where (with --json: the directory and the file names).
fn report(dir: &Path, written: &[PathBuf], json: bool) -> Result<()> {
    let mut out = Out::summary(json);
    if json {
        let names: Vec<_> =
            written.iter().filter_map(|p| p.file_name()).map(|n| n.to_string_lossy()).collect();
        out.line(&json!({"dir": dir.to_string_lossy(), "pages": names}).to_string())?;
    } else {
        out.line(&format!("wrote {} man pages to {}", written.len(), dir.display()))?;
    }
    out.finish()?;
    Ok(())
}
