//! Criterion benchmarks of the crate's kernels, reported as throughput in bytes read, so that
//! GB/s compares directly with memory bandwidth. `cargo bench --bench kernels`.
//!
//! The workloads follow docs/benchmarks.md: x = log_softmax, t = softmax of pseudo-random rows.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kldiv::math::{exp_slice, ln_slice};
use kldiv::{kl_div, kl_div_and_grad_into, kl_div_sum, kl_div_terms_into, Reduction};
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

/// Where the time of one term goes: the pieces on one thread, in cache (100,000 elements),
/// at the best SIMD level. `cargo bench --bench kernels -- parts`.
fn parts(c: &mut Criterion) {
    kldiv::runtime::set_num_threads(1).unwrap();
    let n = 100_000;
    let x = softmax_rows(10, 10_000, 1, true);
    let t = softmax_rows(10, 10_000, 2, false);
    let (x64, t64) = (x.mapv(f64::from), t.mapv(f64::from));
    let (mut out, mut out64) = (vec![0f32; n], vec![0f64; n]);
    let mut grad = Array2::<f32>::zeros(x.dim());
    let mut g = c.benchmark_group("parts_1_thread");
    g.throughput(Throughput::Elements(n as u64));
    let ts = t.as_slice().unwrap();
    g.bench_function("ln_f32", |b| b.iter(|| ln_slice(ts, &mut out)));
    g.bench_function("exp_f32", |b| {
        b.iter(|| exp_slice(x.as_slice().unwrap(), &mut out))
    });
    g.bench_function("sum_f32", |b| {
        b.iter(|| kl_div_sum(x.view(), t.view(), false).unwrap())
    });
    g.bench_function("sum_and_grad_f32", |b| {
        b.iter(|| {
            kl_div_and_grad_into(x.view(), t.view(), Reduction::Sum, grad.view_mut(), false)
                .unwrap()
        })
    });
    let ts64 = t64.as_slice().unwrap();
    g.bench_function("ln_f64", |b| b.iter(|| ln_slice(ts64, &mut out64)));
    g.bench_function("sum_f64", |b| {
        b.iter(|| kl_div_sum(x64.view(), t64.view(), false).unwrap())
    });
    g.finish();
    kldiv::runtime::set_num_threads(0).unwrap();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench, parts
}
criterion_main!(benches);
