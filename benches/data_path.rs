//! Micro-benchmarks of the data path that need no services: digests, chain IDs and
//! reference parsing.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sha2::{Digest, Sha256};

fn digest(c: &mut Criterion) {
    let data = vec![0x5au8; 8 << 20];
    let mut group = c.benchmark_group("digest");
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.bench_function("sha256 8 MiB", |b| {
        b.iter(|| Sha256::digest(black_box(&data)))
    });
    group.finish();
}

fn chain_ids(c: &mut Criterion) {
    let diff_ids: Vec<String> = (0..64).map(|i| format!("sha256:{:064x}", i)).collect();
    c.bench_function("chain_ids 64 layers", |b| {
        b.iter(|| ctrpull::containerd::chain_ids(black_box(&diff_ids)))
    });
}

fn references(c: &mut Criterion) {
    let refs = [
        "busybox",
        "registry.example.com:5000/team/app:1.2.3",
        "ghcr.io/org/tool@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    ];
    c.bench_function("reference parse", |b| {
        b.iter(|| {
            for r in refs {
                black_box(ctrpull::Reference::parse(black_box(r)).unwrap());
            }
        })
    });
}

criterion_group!(benches, digest, chain_ids, references);
criterion_main!(benches);
