//! The selection options of `run`: every file they name is read, and every pattern checked,
//! before the repository is opened (or created), so a typo costs nothing.
use std::path::PathBuf;

use anyhow::{bail, Result};
use engine::ops::select::{files_from, ListForm, Rules};

use crate::RunArgs;

pub struct Selection {
    pub rules: Rules,
    /// The positional paths, then those the --files-from* files list.
    pub paths: Vec<PathBuf>,
    /// The options as command-line words, for the snapshot.
    pub words: Vec<String>,
}

pub fn read(args: &mut RunArgs) -> Result<Selection> {
    let mut rules = Rules::default();
    let mut words = Vec::new();
    let mut word = |opt: &str, value: &dyn std::fmt::Display| words.push(format!("--{opt}={value}"));
    for p in &args.exclude {
        word("exclude", p);
    }
    for f in &args.exclude_file {
        rules.exclude_file(f, false)?;
        word("exclude-file", &f.display());
    }
    for p in &args.iexclude {
        rules.exclude(p, true, "--iexclude")?;
        word("iexclude", p);
    }
    for f in &args.iexclude_file {
        rules.exclude_file(f, true)?;
        word("iexclude-file", &f.display());
    }
    for spec in &args.exclude_if_present {
        rules.exclude_if_present(spec)?;
        word("exclude-if-present", spec);
    }
    if let Some(max) = args.exclude_larger_than {
        rules.larger_than = Some(max);
        word("exclude-larger-than", &max);
    }
    for n in &args.ignore_file {
        rules.ignore_file(n)?;
        word("ignore-file", &n.to_string_lossy());
    }
    let mut paths = std::mem::take(&mut args.paths);
    let lists = [
        (&args.files_from, ListForm::Lines, "files-from"),
        (&args.files_from_verbatim, ListForm::Verbatim, "files-from-verbatim"),
        (&args.files_from_raw, ListForm::Raw, "files-from-raw"),
    ];
    for (files, form, opt) in lists {
        for f in files {
            paths.extend(files_from(f, form)?);
            word(opt, &f.display());
        }
    }
    if args.exclude_caches {
        rules.exclude_caches();
        words.push("--exclude-caches".into());
    }
    if args.one_file_system {
        rules.one_file_system = true;
        words.push("--one-file-system".into());
    }
    if args.exclude_nodump {
        rules.exclude_nodump = true;
        words.push("--exclude-nodump".into());
    }
    if paths.is_empty() {
        bail!("nothing to back up: the --files-from lists name no paths, and none were given");
    }
    Ok(Selection { rules, paths, words })
}
