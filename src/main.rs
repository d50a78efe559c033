//! The `bakare` command line. Everything is in the library (`bakare::main_with`), so the chaos
//! crate can run the very same CLI over a fault-injecting source.
use std::process::ExitCode;
use std::sync::Arc;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    bakare::configure_allocator();
    bakare::main_with(Arc::new(io::LocalSource::default()))
}
