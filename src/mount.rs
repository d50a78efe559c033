//! `mount`: a repository as a read-only file system (FUSE), served until unmounted.
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use engine::Repository;

use crate::output;

#[derive(Args, Debug)]
pub struct MountArgs {
    /// An empty directory to mount the repository at: DIR/snapshots/<time>_<id>/..., DIR/latest,
    /// DIR/hosts/<host>/ and DIR/tags/<tag>/ (symlinks into snapshots/)
    pub dir: PathBuf,
    /// Seconds after which the snapshot list is read again when snapshots/ is looked at
    #[arg(long, default_value_t = 3, value_name = "SECONDS")]
    pub refresh: u64,
    /// Memory ceiling for decoded data kept for later reads: a quarter of it, between 4 MiB and
    /// 1 GiB (default 32 MiB), e.g. 256M, 1G
    #[arg(long, value_parser = crate::parse_size_arg)]
    pub mem_limit: Option<u64>,
    /// Let other users use the mount, each as the stored owners and modes allow (FUSE's
    /// allow_other: as a user other than root, /etc/fuse.conf must say user_allow_other)
    #[arg(long)]
    pub allow_other: bool,
}

/// Bytes of decoded blobs a mount keeps: a quarter of `--mem-limit`, besides the index.
fn cache(mem_limit: Option<u64>) -> usize {
    match mem_limit {
        None => mount::Options::default().cache,
        Some(l) => (l / 4).clamp(4 << 20, 1 << 30) as usize,
    }
}

pub fn mount(repo: Repository, args: MountArgs) -> Result<u8> {
    let opts = mount::Options {
        refresh: Duration::from_secs(args.refresh),
        cache: cache(args.mem_limit),
        allow_other: args.allow_other,
        ..mount::Options::default()
    };
    let mut mounted = mount::mount(repo, &args.dir, opts)?;
    let mut unmounter = mounted.unmounter();
    let dir = args.dir.clone();
    // A signal unmounts, and the command ends as if unmounted from outside.
    crate::interrupt::on_signal(move |name| {
        eprintln!("\nbakare: interrupted by {name}: unmounting {}", dir.display());
        if let Err(e) = unmounter.unmount() {
            eprintln!("bakare: cannot unmount {}: {e} (busy? `fusermount -u -z` it)", dir.display());
        }
    })?;
    if !output::quiet() {
        eprintln!(
            "mounted at {}; unmount with `fusermount -u {}` or Ctrl-C",
            args.dir.display(),
            args.dir.display()
        );
    }
    mounted.run().with_context(|| format!("serving the mount at {}", args.dir.display()))?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn cache_follows_the_memory_ceiling() {
        assert_eq!(super::cache(None), 32 << 20);
        assert_eq!(super::cache(Some(256 << 20)), 64 << 20);
        assert_eq!(super::cache(Some(1 << 20)), 4 << 20);
    }
}
