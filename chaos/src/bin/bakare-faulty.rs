//! The real bakare CLI, reading files through `FaultySource` (rules from BAKARE_FAULTS). Used by
//! the chaos suites to inject file faults that root cannot produce with permissions.
use std::process::ExitCode;
use std::sync::Arc;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match chaos::FaultySource::from_env() {
        Ok(source) => bakare::main_with(Arc::new(source)),
        Err(e) => {
            eprintln!("bakare-faulty: BAKARE_FAULTS: {e}");
            ExitCode::from(2)
        }
    }
}
