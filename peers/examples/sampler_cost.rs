//! What recording audit challenges costs a backup: feeds 16 MiB packs through the sampler as
//! a pack writer does (1 MiB writes) and prints the CPU time per GiB, beside BLAKE3 over the
//! same bytes (what a backup spends hashing chunks anyway). Run with
//! `cargo run --release -p peers --example sampler_cost [GIB]`.
use std::time::Instant;

use peers::audit::Sampler;

fn main() {
    let gib: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(2);
    let piece: Vec<u8> = (0..1u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let packs = gib * 64; // 16 MiB each
    let t = Instant::now();
    let mut challenges = 0usize;
    for _ in 0..packs {
        let mut s = Sampler::default();
        for _ in 0..16 {
            s.feed(&piece);
        }
        challenges += s.finish().len();
    }
    let sampled = t.elapsed();
    let t = Instant::now();
    let mut h = blake3::Hasher::new();
    for _ in 0..packs * 16 {
        h.update(&piece);
    }
    let digest = h.finalize();
    let hashed = t.elapsed();
    println!(
        "{gib} GiB in {packs} packs: sampler {:.3} s ({challenges} challenges), BLAKE3 of all bytes {:.3} s ({}); sampler per GiB {:.1} ms",
        sampled.as_secs_f64(),
        hashed.as_secs_f64(),
        &digest.to_hex()[..8],
        sampled.as_secs_f64() * 1000.0 / gib as f64
    );
}
