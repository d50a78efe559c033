//! The real bakare CLI, reading files through `FaultySource` (rules from BAKARE_FAULTS) and
//! writing the repository through `FaultyBackend` (a crash or pause point from BAKARE_CRASH).
//! Used by the chaos suites to inject faults that root cannot produce with permissions.
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};

use chaos::backend::{CrashPoint, FaultyBackend};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

static POINT: OnceLock<CrashPoint> = OnceLock::new();

fn wrap(inner: Arc<dyn io::Backend>) -> Arc<dyn io::Backend> {
    match POINT.get() {
        Some(p) => Arc::new(FaultyBackend::new(inner, p.clone())),
        None => inner,
    }
}

fn main() -> ExitCode {
    let source = match chaos::FaultySource::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bakare-faulty: BAKARE_FAULTS: {e}");
            return ExitCode::from(2);
        }
    };
    match CrashPoint::from_env() {
        Ok(Some(p)) => {
            let _ = POINT.set(p);
        }
        Ok(None) => {}
        Err(e) => {
            eprintln!("bakare-faulty: BAKARE_CRASH: {e}");
            return ExitCode::from(2);
        }
    }
    bakare::main_with_backend(Arc::new(source), wrap)
}
