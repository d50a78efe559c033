//! A bounded fuzz run of every on-disk decoder (the cargo-fuzz targets' entry points in
//! `engine::fuzz`), in CI: random inputs and mutations of valid encodings (bit flips, cuts,
//! insertions, length fields set to huge values, spliced repeats). No decoder may panic or
//! make an allocation larger than any valid object needs (a length field trusted blindly);
//! seeds must be accepted, so the mutations start from real formats.
//! BAKARE_FUZZ_ITERATIONS=N runs longer (default 3000 per target and kind).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use chaos::testkit::Rng;
use engine::fuzz::{samples, TARGETS};

/// The system allocator, remembering the largest single request.
struct Largest;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only records sizes.
unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller upholds GlobalAlloc::alloc's contract, passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above; `ptr` came from System.alloc with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Largest = Largest;

/// Blobs may claim at most 16 MiB; a little over that is the most any decoder needs.
const MAX_ALLOCATION: usize = 40 << 20;

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut d = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = d.len() as u64;
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len) as usize;
                d[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => d.truncate(rng.below(len) as usize),
            2 => {
                let i = rng.below(len + 1) as usize;
                let n = 1 + rng.below(16) as usize;
                let extra = rng.bytes(n);
                d.splice(i..i, extra);
            }
            3 if len >= 4 => {
                // A length or count field made huge.
                let i = rng.below(len - 3) as usize;
                let v: u32 = [u32::MAX, 0x7fff_ffff, 1 << 30, 0xffff][rng.below(4) as usize];
                d[i..i + 4].copy_from_slice(&v.to_le_bytes());
            }
            4 if len > 0 => {
                // A varint made huge (postcard lengths are varints).
                let i = rng.below(len) as usize;
                let n = (1 + rng.below(9) as usize).min(d.len() - i);
                d[i..i + n].fill(0xff);
            }
            5 if len > 8 => {
                let a = rng.below(len / 2) as usize;
                let b = a + rng.below((len - a as u64).min(64)) as usize;
                let piece = d[a..b].to_vec();
                let at = rng.below(d.len() as u64 + 1) as usize;
                d.splice(at..at, piece);
            }
            _ if len > 0 => {
                let i = rng.below(len) as usize;
                d.remove(i);
            }
            _ => d.push(rng.below(256) as u8),
        }
    }
    d
}

#[test]
fn no_decoder_panics_or_allocates_without_bound() {
    let iterations: u64 =
        std::env::var("BAKARE_FUZZ_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(3000);
    let mut rng = Rng::new(0xF022);
    let mut report = Vec::new();
    for (name, target) in TARGETS {
        let seeds = samples(name);
        assert!(!seeds.is_empty(), "{name}: no seeds");
        for s in &seeds {
            assert!(target(s), "{name}: a valid encoding is rejected");
        }
        let mut accepted = 0;
        for i in 0..iterations {
            let input = if i % 2 == 0 {
                let n = rng.below(if i % 10 == 0 { 64 << 10 } else { 512 }) as usize;
                rng.bytes(n)
            } else {
                let which = rng.below(seeds.len() as u64) as usize;
                mutate(&mut rng, &seeds[which])
            };
            let r = std::panic::catch_unwind(|| target(&input));
            match r {
                Ok(ok) => accepted += usize::from(ok),
                Err(_) => panic!("{name} panicked on input {:02x?}", &input[..input.len().min(256)]),
            }
        }
        report.push(format!("{name}: {iterations} inputs, {accepted} accepted"));
    }
    let largest = LARGEST.load(Ordering::Relaxed);
    eprintln!("{}\nlargest allocation: {} KiB", report.join("\n"), largest >> 10);
    assert!(largest <= MAX_ALLOCATION, "an allocation of {largest} bytes: a length field was trusted");
}
