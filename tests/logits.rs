//! Losses from logits against a float64 evaluation of the same formulas on the same logits
//! (SPEC "From logits": losses within 1e-6 relative or 1e-7 absolute, gradients within 4
//! float32 ulp or 1e-9 absolute), their edge cases, and their rules.

use kldiv::{
    kl_div_logits, kl_div_logits_and_grad_into, kl_div_logits_rows_into,
    runtime::{detected_simd_level, set_num_threads, with_simd_level, SimdLevel},
    Bf16, Divergence, Logit, LogitsLoss, LogitsReduction, F16,
};
use ndarray::{s, Array1, Array2, ArrayView1, ShapeBuilder};

/// Standard normals from a fixed seed (Box-Muller over an LCG).
fn normals(n: usize, seed: u64) -> Vec<f64> {
    let mut state = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    let mut unit = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| (-2.0 * unit().ln()).sqrt() * (std::f64::consts::TAU * unit()).cos())
        .collect()
}

/// The float64 loss and gradient (for an incoming gradient of 1, summed) of one row.
fn reference(
    s: ArrayView1<f32>,
    t: ArrayView1<f32>,
    temp: f64,
    div: Divergence,
) -> (f64, Vec<f64>) {
    let log_softmax = |z: ArrayView1<f32>| {
        let a: Vec<f64> = z.iter().map(|&v| v as f64 / temp).collect();
        let m = a.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + a.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        a.iter().map(|v| v - lse).collect::<Vec<f64>>()
    };
    let (ls, lt) = (log_softmax(s), log_softmax(t));
    let q: Vec<f64> = ls.iter().map(|v| v.exp()).collect();
    let p: Vec<f64> = lt.iter().map(|v| v.exp()).collect();
    let n = ls.len();
    let xlogy = |w: f64, d: f64| if w == 0.0 { 0.0 } else { w * d };
    match div.normalized() {
        Divergence::Forward => {
            let l = (0..n).map(|v| xlogy(p[v], lt[v] - ls[v])).sum();
            (l, (0..n).map(|v| (q[v] - p[v]) / temp).collect())
        }
        Divergence::CrossEntropy => {
            let l = (0..n).map(|v| xlogy(p[v], -ls[v])).sum();
            (l, (0..n).map(|v| (q[v] - p[v]) / temp).collect())
        }
        Divergence::Reverse => {
            let l: f64 = (0..n).map(|v| xlogy(q[v], ls[v] - lt[v])).sum();
            let g = (0..n)
                .map(|v| xlogy(q[v], ls[v] - lt[v] - l) / temp)
                .collect();
            (l, g)
        }
        Divergence::Jsd(b) => {
            let m: Vec<f64> = (0..n).map(|v| (b * p[v] + (1.0 - b) * q[v]).ln()).collect();
            let k: f64 = (0..n).map(|v| xlogy(q[v], ls[v] - m[v])).sum();
            let l = (0..n)
                .map(|v| b * xlogy(p[v], lt[v] - m[v]) + (1.0 - b) * xlogy(q[v], ls[v] - m[v]))
                .sum();
            let g = (0..n)
                .map(|v| (1.0 - b) * xlogy(q[v], ls[v] - m[v] - k) / temp)
                .collect();
            (l, g)
        }
    }
}

/// The distance from `a` to the next `f32` away from zero.
fn ulp(a: f64) -> f64 {
    let f = (a.abs() as f32).max(f32::MIN_POSITIVE);
    (f32::from_bits(f.to_bits() + 1) - f) as f64
}

/// Student and teacher logits of one kind: `(rows, vocab)`.
fn logits(kind: &str, rows: usize, vocab: usize, seed: u64) -> (Array2<f32>, Array2<f32>) {
    let a = normals(rows * vocab, seed);
    let b = normals(rows * vocab, seed + 1);
    let (scale, noise, offset) = match kind {
        "bench" => (3.0, 1.0, 0.0),
        "peaked" => (12.0, 3.0, 0.0),
        "close" => (3.0, 1e-3, 0.0),
        "offset" => (3.0, 1.0, 3000.0),
        "flat" => (0.01, 0.01, 0.0),
        _ => unreachable!(),
    };
    let s = Array2::from_shape_fn((rows, vocab), |(r, v)| {
        (scale * a[r * vocab + v] + offset) as f32
    });
    let t = Array2::from_shape_fn((rows, vocab), |(r, v)| {
        (scale * a[r * vocab + v] + noise * b[r * vocab + v] + offset) as f32
    });
    (s, t)
}

fn divergences() -> Vec<Divergence> {
    vec![
        Divergence::Forward,
        Divergence::Reverse,
        Divergence::Jsd(0.5),
        Divergence::Jsd(0.1),
        Divergence::Jsd(0.9),
        Divergence::CrossEntropy,
    ]
}

/// Each row's loss and the summed loss's gradient, checked against [`reference`].
fn check_against_reference(
    s: &Array2<f32>,
    t: &Array2<f32>,
    temp: f64,
    div: Divergence,
    what: &str,
) {
    let loss = LogitsLoss::new(div).temperature(temp);
    let mut rows = vec![0.0; s.nrows()];
    kl_div_logits_rows_into(s.view(), t.view(), &loss, &mut rows).unwrap();
    let mut g = Array2::<f32>::zeros(s.dim());
    let total = kl_div_logits_and_grad_into(
        s.view(),
        t.view(),
        &loss,
        LogitsReduction::Sum,
        g.view_mut(),
    )
    .unwrap();
    let mut ref_total = 0.0;
    for r in 0..s.nrows() {
        let (l, gr) = reference(s.row(r), t.row(r), temp, div);
        ref_total += l;
        assert!(
            (rows[r] - l).abs() <= (1e-6 * l.abs()).max(1e-7),
            "{what} {div:?} T={temp} row {r}: loss {} vs {l}",
            rows[r]
        );
        for (v, &want) in gr.iter().enumerate() {
            let got = g[[r, v]] as f64;
            assert!(
                (got - want).abs() <= (4.0 * ulp(want)).max(1e-9),
                "{what} {div:?} T={temp} row {r} element {v}: gradient {got:e} vs {want:e} \
                 ({} ulp)",
                (got - want).abs() / ulp(want)
            );
        }
    }
    assert!((total - ref_total).abs() <= (1e-6 * ref_total.abs()).max(1e-7));
}

#[test]
fn float32_matches_a_float64_evaluation() {
    for (i, kind) in ["bench", "peaked", "close", "offset", "flat"]
        .iter()
        .enumerate()
    {
        let (s, t) = logits(kind, 6, 2053, 10 * i as u64);
        for temp in [1.0, 2.0, 0.7] {
            for div in divergences() {
                check_against_reference(&s, &t, temp, div, kind);
            }
        }
    }
}

#[test]
fn masked_entries_give_no_nan() {
    // -inf on either side, on both, and a whole masked tail, as padded vocabularies have:
    // every 7th entry (rows that take the exact path whole) and every 41st, with entries far
    // below the rest (probabilities of about e^-100), on the vectorised path. T = 0.5 gives a
    // gradient scale above 1 (see `row`'s PLAIN_DIFF_SCALE).
    for (vocab, every) in [(300, 7), (2053, 41)] {
        masked_entries_every(vocab, every);
    }
}

fn masked_entries_every(vocab: usize, every: usize) {
    let (mut s, mut t) = logits("bench", 4, vocab, 7);
    for v in (0..vocab).step_by(every) {
        t[[0, v]] = f32::NEG_INFINITY;
        s[[1, v]] = f32::NEG_INFINITY;
        s[[2, v]] = f32::NEG_INFINITY;
        t[[2, v]] = f32::NEG_INFINITY;
        if every > 16 {
            s[[0, (v + 3) % vocab]] = -100.0;
            t[[1, (v + 5) % vocab]] = -100.0;
            s[[3, (v + 2) % vocab]] = -100.0;
            t[[3, (v + 2) % vocab]] = -100.0;
        }
    }
    for v in vocab - 50..vocab {
        s[[3, v]] = f32::NEG_INFINITY;
        t[[3, v]] = f32::NEG_INFINITY;
    }
    for temp in [1.0, 2.0, 0.5] {
        for div in divergences() {
            let loss = LogitsLoss::new(div).temperature(temp);
            let mut rows = [0.0; 4];
            kl_div_logits_rows_into(s.view(), t.view(), &loss, &mut rows).unwrap();
            let mut g = Array2::<f32>::zeros(s.dim());
            kl_div_logits_and_grad_into(
                s.view(),
                t.view(),
                &loss,
                LogitsReduction::Sum,
                g.view_mut(),
            )
            .unwrap();
            for r in 0..4 {
                let (l, gr) = reference(s.row(r), t.row(r), temp, div);
                // Where P > 0 and Q = 0 the forward KL is +inf (row 1; the reverse KL of row
                // 0 likewise), as mathematics says; its gradient is then not a number.
                if l.is_infinite() {
                    assert_eq!(rows[r], l, "{div:?} row {r}");
                    continue;
                }
                assert!(
                    (rows[r] - l).abs() <= (1e-6 * l.abs()).max(1e-7),
                    "{div:?} row {r}"
                );
                for (v, &want) in gr.iter().enumerate() {
                    let got = g[[r, v]] as f64;
                    assert!(
                        (got - want).abs() <= (4.0 * ulp(want)).max(1e-9),
                        "{div:?} T={temp} row {r} element {v}: {got} vs {want}"
                    );
                }
            }
        }
    }
}

#[test]
fn nan_and_all_masked_rows_are_nan_and_only_they() {
    let (mut s, mut t) = logits("bench", 3, 100, 3);
    s[[0, 5]] = f32::NAN;
    t.row_mut(1).fill(f32::NEG_INFINITY);
    for div in divergences() {
        let mut rows = [0.0; 3];
        kl_div_logits_rows_into(s.view(), t.view(), &LogitsLoss::new(div), &mut rows).unwrap();
        assert!(rows[0].is_nan() && rows[1].is_nan(), "{div:?}: {rows:?}");
        assert!(rows[2].is_finite(), "{div:?}: {rows:?}");
    }
}

#[test]
fn jsd_at_zero_and_one_is_the_forward_and_reverse_kl() {
    let (s, t) = logits("bench", 3, 500, 11);
    for (beta, div) in [(0.0, Divergence::Forward), (1.0, Divergence::Reverse)] {
        let sum = |d| {
            let mut g = Array2::<f32>::zeros(s.dim());
            let l = kl_div_logits_and_grad_into(
                s.view(),
                t.view(),
                &LogitsLoss::new(d).temperature(2.0),
                LogitsReduction::Sum,
                g.view_mut(),
            )
            .unwrap();
            (l, g)
        };
        assert_eq!(sum(Divergence::Jsd(beta)), sum(div));
    }
}

#[test]
fn reductions_weights_and_labels() {
    let (s, t) = logits("bench", 4, 64, 5);
    let labels = Array1::from(vec![3_i64, -100, 7, -100]);
    let weights = Array1::from(vec![0.5, 2.0, 1.5, 1.0]);
    let div = Divergence::Jsd(0.3);
    let mut plain = [0.0; 4];
    kl_div_logits_rows_into(s.view(), t.view(), &LogitsLoss::new(div), &mut plain).unwrap();
    let loss = LogitsLoss::new(div)
        .labels(labels.view().into_dyn(), -100)
        .weights(weights.view().into_dyn());
    let mut rows = [0.0; 4];
    kl_div_logits_rows_into(s.view(), t.view(), &loss, &mut rows).unwrap();
    assert_eq!(rows, [0.5 * plain[0], 0.0, 1.5 * plain[2], 0.0]);
    let total = 0.5 * plain[0] + 1.5 * plain[2];
    let red = |r| kl_div_logits(s.view(), t.view(), &loss, r).unwrap();
    assert!((red(LogitsReduction::Sum) - total).abs() <= 1e-15 * total);
    assert!((red(LogitsReduction::Mean) - total / 2.0).abs() <= 1e-15 * total);
    assert!((red(LogitsReduction::BatchMean) - total / 4.0).abs() <= 1e-15 * total);
    // The gradient of the mean: rows that do not count are exactly 0, the others scaled.
    let mut g = Array2::<f32>::from_elem(s.dim(), 9.0);
    kl_div_logits_and_grad_into(
        s.view(),
        t.view(),
        &loss,
        LogitsReduction::Mean,
        g.view_mut(),
    )
    .unwrap();
    let mut g1 = Array2::<f32>::zeros(s.dim());
    kl_div_logits_and_grad_into(
        s.view(),
        t.view(),
        &LogitsLoss::new(div),
        LogitsReduction::Sum,
        g1.view_mut(),
    )
    .unwrap();
    for v in 0..64 {
        assert_eq!(g[[1, v]].to_bits(), 0);
        assert_eq!(g[[3, v]].to_bits(), 0);
        let want = g1[[0, v]] as f64 * 0.5 / 2.0;
        assert!((g[[0, v]] as f64 - want).abs() <= 2.0 * ulp(want));
    }
    // A mean over no row that counts is 0, with a zero gradient.
    let none = Array1::from(vec![-100_i64; 4]);
    let masked = LogitsLoss::new(div).labels(none.view().into_dyn(), -100);
    assert_eq!(
        kl_div_logits(s.view(), t.view(), &masked, LogitsReduction::Mean).unwrap(),
        0.0
    );
    kl_div_logits_and_grad_into(
        s.view(),
        t.view(),
        &masked,
        LogitsReduction::Mean,
        g.view_mut(),
    )
    .unwrap();
    assert!(g.iter().all(|v| v.to_bits() == 0));
}

#[test]
fn float64_logits_are_exact() {
    let (s32, t32) = logits("peaked", 3, 301, 13);
    let (s, t) = (s32.mapv(|v| v as f64), t32.mapv(|v| v as f64));
    for div in divergences() {
        let loss = LogitsLoss::new(div).temperature(1.5);
        let mut g = Array2::<f64>::zeros(s.dim());
        let mut rows = [0.0; 3];
        kl_div_logits_rows_into(s.view(), t.view(), &loss, &mut rows).unwrap();
        kl_div_logits_and_grad_into(
            s.view(),
            t.view(),
            &loss,
            LogitsReduction::Sum,
            g.view_mut(),
        )
        .unwrap();
        for r in 0..3 {
            let (l, gr) = reference(s32.row(r), t32.row(r), 1.5, div);
            assert!(
                (rows[r] - l).abs() <= 1e-13 * l.abs().max(1e-3),
                "{div:?} row {r}: {} vs {l}",
                rows[r]
            );
            // The reference's own log-probabilities are only good to ~1e-14 absolute.
            for (v, &want) in gr.iter().enumerate() {
                let got = g[[r, v]];
                assert!(
                    (got - want).abs() <= (1e-12 * want.abs()).max(1e-13),
                    "{div:?} row {r} element {v}: {got:e} vs {want:e}"
                );
            }
        }
    }
}

#[test]
fn half_precision_logits_are_read_and_written_in_their_type() {
    // Every bfloat16 and float16 value widens exactly and narrows back to itself.
    for bits in 0..=u16::MAX {
        let (b, h) = (Bf16(bits), F16(bits));
        let (wb, wh) = (b.widen(), h.widen());
        if wb.is_nan() {
            assert!(Bf16::narrow(wb as f64).widen().is_nan());
        } else {
            assert_eq!(Bf16::narrow(wb as f64), b, "{bits:#x}");
        }
        if wh.is_nan() {
            assert!(F16::narrow(wh as f64).widen().is_nan());
        } else {
            assert_eq!(F16::narrow(wh as f64), h, "{bits:#x}");
        }
    }
    // Ties round to even; beyond the range, infinity.
    assert_eq!(Bf16::narrow(1.0 + 2f64.powi(-8)).0, 0x3f80);
    assert_eq!(Bf16::narrow(1.0 + 3.0 * 2f64.powi(-8)).0, 0x3f82);
    assert_eq!(F16::narrow(1.0 + 2f64.powi(-11)).0, 0x3c00);
    assert_eq!(F16::narrow(65520.0).0, 0x7c00);
    assert_eq!(F16::narrow(65519.0).0, 0x7bff);
    assert_eq!(F16::narrow(2f64.powi(-25)).0, 0); // half the smallest subnormal: to even
    assert_eq!(F16::narrow(3.0 * 2f64.powi(-25)).0, 2);
    // Loss and gradient of bfloat16 logits: those of their float32 values, rounded.
    let (s, t) = logits("bench", 3, 777, 17);
    let (sb, tb) = (
        s.mapv(|v| Bf16::narrow(v as f64)),
        t.mapv(|v| Bf16::narrow(v as f64)),
    );
    let (sw, tw) = (sb.mapv(|v| v.widen()), tb.mapv(|v| v.widen()));
    let loss = LogitsLoss::new(Divergence::Jsd(0.5)).temperature(2.0);
    let mut gb = Array2::<Bf16>::default(s.dim());
    let mut gw = Array2::<f32>::zeros(s.dim());
    let r = LogitsReduction::Mean;
    let lb = kl_div_logits_and_grad_into(sb.view(), tb.view(), &loss, r, gb.view_mut()).unwrap();
    let lw = kl_div_logits_and_grad_into(sw.view(), tw.view(), &loss, r, gw.view_mut()).unwrap();
    assert_eq!(lb, lw);
    assert_eq!(gb, gw.mapv(|v| Bf16::narrow(v as f64)));
}

#[test]
fn same_bits_for_every_layout_thread_count_and_simd_level() {
    let (s, t) = logits("peaked", 37, 1001, 19);
    let run = |s: ndarray::ArrayView2<f32>, t: ndarray::ArrayView2<f32>| {
        let mut bits = vec![];
        for div in divergences() {
            let loss = LogitsLoss::new(div).temperature(2.0);
            let mut g = Array2::<f32>::zeros((37, 1001));
            let l = kl_div_logits_and_grad_into(s, t, &loss, LogitsReduction::Mean, g.view_mut())
                .unwrap();
            bits.push(l.to_bits());
            bits.extend(g.iter().map(|v| v.to_bits() as u64));
        }
        bits
    };
    let want = run(s.view(), t.view());
    let fs = {
        let mut a = Array2::<f32>::zeros((37, 1001).f());
        a.assign(&s);
        a
    };
    let mut wide = Array2::<f32>::zeros((37, 2002));
    wide.slice_mut(s![.., ..;2]).assign(&t);
    for threads in [1, 3] {
        set_num_threads(threads).unwrap();
        for level in [SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512] {
            if level > detected_simd_level() {
                continue;
            }
            with_simd_level(level, || {
                assert_eq!(
                    run(s.view(), t.view()),
                    want,
                    "{threads} threads, {level:?}"
                );
                assert_eq!(run(fs.view(), wide.slice(s![.., ..;2])), want, "layouts");
            });
        }
    }
    set_num_threads(0).unwrap();
}

#[test]
fn rows_broadcast_and_options_are_checked() {
    let (s, t) = logits("bench", 4, 50, 23);
    // One teacher row for every student row equals the row repeated.
    let t0 = t.slice(s![..1, ..]);
    let rep = Array2::from_shape_fn((4, 50), |(_, v)| t[[0, v]]);
    let loss = LogitsLoss::new(Divergence::Forward);
    let r = LogitsReduction::Sum;
    assert_eq!(
        kl_div_logits(s.view(), t0, &loss, r).unwrap(),
        kl_div_logits(s.view(), rep.view(), &loss, r).unwrap()
    );
    let err = |l: &LogitsLoss<'_>, t: ndarray::ArrayView2<f32>| {
        kl_div_logits(s.view(), t, l, r).unwrap_err().to_string()
    };
    assert!(err(&loss, t.slice(s![.., ..49])).contains("(4, 49)"));
    assert!(err(&loss, t.slice(s![..3, ..])).contains("(3, 50)"));
    assert!(err(&loss.clone().temperature(0.0), t.view()).contains("temperature"));
    assert!(err(&loss.clone().temperature(f64::NAN), t.view()).contains("temperature"));
    assert!(err(&LogitsLoss::new(Divergence::Jsd(1.5)), t.view()).contains("beta"));
    let labels = Array1::from(vec![1_i64; 3]);
    assert!(err(
        &loss.clone().labels(labels.view().into_dyn(), -100),
        t.view()
    )
    .contains("labels"));
    let mut g = Array2::<f32>::zeros((4, 49));
    assert!(kl_div_logits_and_grad_into(s.view(), t.view(), &loss, r, g.view_mut()).is_err());
}
