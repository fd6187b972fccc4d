//! Criterion benchmarks of the crate's kernels, reported as throughput in bytes read, so that
//! GB/s compares directly with memory bandwidth. `cargo bench --bench kernels`.
//!
//! The workloads follow BENCHMARKS.md: x = log_softmax, t = softmax of pseudo-random rows.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kldiv::{kl_div, kl_div_terms_into, Reduction};
use ndarray::{Array2, Axis};

fn softmax_rows(rows: usize, cols: usize, seed: u64, log: bool) -> Array2<f32> {
    let mut state = seed;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 11) as f64 / (1u64 << 53) as f64) as f32 * 6.0 - 3.0
    };
    let mut a = Array2::from_shape_simple_fn((rows, cols), &mut next);
    for mut row in a.axis_iter_mut(Axis(0)) {
        let lse = row.iter().map(|v| v.exp()).sum::<f32>().ln();
        row.mapv_inplace(|v| if log { v - lse } else { (v - lse).exp() });
    }
    a
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("kl_div_f32");
    for &(rows, cols) in &[(1, 1000), (1000, 1000), (1000, 10_000)] {
        let x = softmax_rows(rows, cols, 1, true);
        let t = softmax_rows(rows, cols, 2, false);
        let n = rows * cols;
        g.throughput(Throughput::Bytes((2 * n * 4) as u64));
        g.bench_with_input(BenchmarkId::new("batchmean", n), &n, |b, _| {
            b.iter(|| kl_div(x.view(), t.view(), Reduction::BatchMean, false).unwrap())
        });
        g.bench_with_input(BenchmarkId::new("batchmean_fortran", n), &n, |b, _| {
            b.iter(|| kl_div(x.t(), t.t(), Reduction::BatchMean, false).unwrap())
        });
        g.bench_with_input(BenchmarkId::new("read_floor_1_thread", n), &n, |b, _| {
            b.iter(|| x.sum() + t.sum())
        });
        let mut out = Array2::<f32>::zeros((rows, cols));
        g.bench_with_input(BenchmarkId::new("none", n), &n, |b, _| {
            b.iter(|| kl_div_terms_into(x.view(), t.view(), out.view_mut(), false).unwrap())
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
