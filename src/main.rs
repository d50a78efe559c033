//! The `bakare` command line. Everything is in the library (`bakare::main_with`), so the chaos
//! crate can run the very same CLI over a fault-injecting source.
use std::process::ExitCode;
use std::sync::Arc;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Before main: the allocator's options must be set before its first allocation.
#[ctor::ctor(unsafe, priority = early)]
fn configure_allocator() {
    bakare::configure_allocator();
}

fn main() -> ExitCode {
    bakare::main_with(Arc::new(io::LocalSource::default()))
}
