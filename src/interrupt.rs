//! What an interrupted command says before it ends. SIGINT, SIGTERM and SIGHUP print one line
//! (for `run`: whether a snapshot was committed, and that the next run resumes), then end the
//! process by the same signal, so a shell or a service manager sees how it ended. A second
//! signal ends it at once, even if the note cannot be written (stderr a full pipe). Stopping
//! at any instant is safe: every object is written under a temporary name and linked into
//! place, and prune removes temporary files a grace period old.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

/// What `run` says when interrupted before its snapshot is committed.
pub const RUN: &str = "this run committed no snapshot; the next run of the same paths resumes, \
    reusing the data it stored (all but about its last minute)";
/// What `run` says once its snapshot is committed.
const RUN_COMMITTED: &str = "its snapshot was committed before the interruption";
/// What any other command says.
pub const OTHER: &str = "what it finished stays, and the repository stays valid; run it again to finish";

static COMMITTED: AtomicBool = AtomicBool::new(false);

/// Called once `run` has committed its snapshot.
pub fn committed() {
    COMMITTED.store(true, Ordering::SeqCst);
}

const SIGNALS: [i32; 3] = [SIGINT, SIGTERM, SIGHUP];

fn signal_name(sig: i32) -> &'static str {
    match sig {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        _ => "SIGHUP",
    }
}

/// Calls `first` with the signal on a thread of its own at the first of the three signals;
/// the next one takes its default action (ends the process at once).
fn handle(first: impl FnOnce(i32) + Send + 'static) -> Result<()> {
    let second = Arc::new(AtomicBool::new(false));
    for sig in SIGNALS {
        signal_hook::flag::register_conditional_default(sig, second.clone())
            .context("cannot handle interruption signals")?;
    }
    let mut signals =
        signal_hook::iterator::Signals::new(SIGNALS).context("cannot handle interruption signals")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                second.store(true, Ordering::SeqCst);
                first(sig);
            }
        })
        .context("cannot start the signal thread")?;
    Ok(())
}

/// For commands that stop cleanly by themselves (`mount` unmounts, then returns): at the first
/// signal, `stop` is called with its name; a second one ends the process at once.
pub fn on_signal(stop: impl FnOnce(&'static str) + Send + 'static) -> Result<()> {
    handle(move |sig| stop(signal_name(sig)))
}

/// Handles the three signals on a thread of their own, printing `note`.
pub fn install(note: &'static str) -> Result<()> {
    handle(move |sig| {
        let name = signal_name(sig);
        let note = if note == RUN && COMMITTED.load(Ordering::SeqCst) { RUN_COMMITTED } else { note };
        eprintln!("\nbakare: interrupted by {name}: {note}");
        // Ends the process as the signal's default action would; exit in case it
        // returns (it does only if the signal is blocked).
        let _ = signal_hook::low_level::emulate_default_handler(sig);
        std::process::exit(128 + sig);
    })
}
