//! Per-byte cost of each CPU stage of the backup pipeline, one core, on 4 MiB inputs.
//!
//! What the numbers mean: each group reports time per iteration and throughput (bytes of
//! *input* per second). Time / bytes = ns per byte on one core. The pipeline's CPU ceiling is
//! `cores / (sum of the ns/byte of the stages a byte goes through)`: chunk + hash + zstd + AES
//! for compressible text (AES then sees only the compressed bytes: divide its cost by the
//! ratio), chunk + hash + probe + AES for incompressible data (compression is skipped), chunk +
//! hash for data that dedups. Reading (page cache or disk) comes on top. Compare design.md 1b.
//!
//! Fairness: the inputs are deterministic (seeded xorshift for incompressible data, generated
//! English-like text for compressible data) and generated outside the timed region; buffers that
//! a stage consumes are cloned outside it too (`iter_batched`). Everything is warm in cache, which
//! flatters the stages a little against a real run, where data arrives from the read stage.
//! The page-cache read is for reference: the cheapest a byte can get into memory.
//!
//! `index` is not per byte: building the lookup table from 300,000 entries (what a no-change run
//! over 300,000 small files loads before its scan starts) and looking every one of them up (what
//! that run does for each unchanged file), in random order.

use std::fmt::Display;
use std::io::{Read, Seek, SeekFrom, Write};

use bench::gen;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use stages::chunk::{cut, ChunkParams};
use stages::compress::Compressor;
use stages::encrypt::{seal, KeyEpoch};
use stages::hash::blob_id;
use stages::msg::BlobKind;

const INPUT: usize = 4 << 20;
const CHUNK: usize = 1 << 20;
const FILE: usize = 64 << 20;

/// Setup failure ends the benchmark with the reason (there is nothing to measure without it).
fn must<T, E: Display>(r: Result<T, E>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn random() -> Vec<u8> {
    gen::random_bytes(0xC0FF_EE00, INPUT)
}

fn text() -> Vec<u8> {
    gen::text(0x7E47, INPUT)
}

fn chunk(c: &mut Criterion) {
    let params = ChunkParams::with_seed(0x1234_5678_9abc_def1);
    let mut g = c.benchmark_group("chunk");
    g.throughput(Throughput::Bytes(INPUT as u64));
    for (name, data) in [("random", random()), ("text", text())] {
        g.bench_function(name, |b| b.iter(|| cut(&params, std::hint::black_box(&data), false)));
    }
    g.finish();
}

fn hash(c: &mut Criterion) {
    let data = random();
    let mut g = c.benchmark_group("hash");
    g.throughput(Throughput::Bytes(INPUT as u64));
    g.bench_function("blake3-keyed-1MiB-chunks", |b| {
        b.iter(|| {
            for piece in data.chunks(CHUNK) {
                std::hint::black_box(blob_id(&[7u8; 32], std::hint::black_box(piece)));
            }
        })
    });
    g.finish();
}

fn compress(c: &mut Criterion) {
    let mut z = must(Compressor::new(1), "zstd context");
    let mut g = c.benchmark_group("compress");
    g.throughput(Throughput::Bytes(INPUT as u64));
    // Random data is stored raw after the 16 KiB probe: this measures the probe plus the copy.
    for (name, data) in [("zstd1-text", text()), ("zstd1-random-skipped", random())] {
        let framed = z.frame(&data).len();
        eprintln!("compress/{name}: {INPUT} -> {framed} bytes framed ({:.2}x)", INPUT as f64 / framed as f64);
        g.bench_function(name, |b| b.iter(|| z.frame(std::hint::black_box(&data))));
    }
    g.finish();
}

fn encrypt(c: &mut Criterion) {
    let mut z = must(Compressor::new(1), "zstd context");
    let framed = z.frame(&random());
    let epoch = KeyEpoch::new();
    let mut counter = 0u64;
    let mut g = c.benchmark_group("encrypt");
    g.throughput(Throughput::Bytes(INPUT as u64));
    g.bench_function("aes256gcm-seal", |b| {
        b.iter_batched(
            || framed.clone(),
            |mut buf| {
                counter += 1;
                assert!(seal(&epoch, counter, &[1u8; 32], BlobKind::Data, &mut buf));
                buf
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn page_cache(c: &mut Criterion) {
    let mut file = must(tempfile::NamedTempFile::new(), "temp file");
    for piece in gen::random_bytes(1, FILE).chunks(CHUNK) {
        must(file.write_all(piece), "writing the temp file");
    }
    must(file.flush(), "writing the temp file");
    let path = file.path().to_path_buf();
    must(std::fs::read(&path), "reading the temp file"); // now it is in the page cache
    let mut g = c.benchmark_group("page-cache-read");
    g.throughput(Throughput::Bytes(FILE as u64));
    g.sample_size(20);
    // Allocates and faults in 64 MiB every time, as std::fs::read does.
    g.bench_function("fs-read-64MiB", |b| b.iter(|| must(std::fs::read(&path), "reading")));
    // Into a reused buffer: the copy from the page cache alone.
    let mut buf = vec![0u8; FILE];
    let mut f = must(std::fs::File::open(&path), "opening the temp file");
    g.bench_function("read-into-reused-buffer-64MiB", |b| {
        b.iter(|| {
            must(f.seek(SeekFrom::Start(0)), "seeking");
            must(f.read_exact(&mut buf), "reading");
        })
    });
    g.finish();
}

/// 300,000 entries with random ids, in packs of 37,000 (a pack of tiny files), as a loader adds
/// them.
fn index_entries() -> Vec<([u8; 32], Vec<engine::pack::BlobEntry>)> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut packs = Vec::new();
    for p in 0..9u8 {
        let entries = (0..37_000u32.min(300_000 - u32::from(p) * 37_000))
            .map(|i| {
                let mut id = [0u8; 32];
                for w in id.chunks_mut(8) {
                    w.copy_from_slice(&next().to_le_bytes());
                }
                engine::pack::BlobEntry { id, kind: 0, offset: i, len: 900, raw_len: 2000, inner: Some(i) }
            })
            .collect();
        packs.push(([p; 32], entries));
    }
    packs
}

fn index(c: &mut Criterion) {
    let packs = index_entries();
    let builder = || {
        let mut b = engine::index::IndexBuilder::default();
        for (p, entries) in &packs {
            b.add_pack(*p, entries);
        }
        b
    };
    let mut g = c.benchmark_group("index");
    g.bench_function("build-300k", |b| b.iter_batched(builder, |b| b.build(), BatchSize::LargeInput));
    let index = builder().build();
    let mut ids: Vec<[u8; 32]> = packs.iter().flat_map(|(_, e)| e.iter().map(|e| e.id)).collect();
    ids.reverse(); // not in the table's order
    g.bench_function("lookup-all-300k", |b| {
        b.iter(|| ids.iter().filter(|id| index.contains(std::hint::black_box(id))).count())
    });
    g.finish();
}

criterion_group!(benches, chunk, hash, compress, encrypt, page_cache, index);
criterion_main!(benches);
