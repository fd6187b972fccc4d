//! kldiv from Rust alone: the batch-mean KL divergence between a model's predicted
//! distributions and target distributions, plus the unreduced terms of the first row.
//!
//! Run with `cargo run --release --example batchmean`.

use kldiv::{kl_div, kl_div_terms, Reduction};
use ndarray::{Array2, Axis};

fn main() -> Result<(), kldiv::Error> {
    let (rows, cols) = (1000, 10_000);
    // Targets: softmax of a smooth pattern; predictions: a slightly shifted softmax, as logs.
    let logits = Array2::from_shape_fn((rows, cols), |(i, j)| {
        ((i * 7 + j * 13) % 101) as f32 / 25.0
    });
    let softmax = |z: &Array2<f32>, log: bool| {
        let mut out = z.clone();
        for mut row in out.axis_iter_mut(Axis(0)) {
            let lse = row.iter().map(|v| v.exp()).sum::<f32>().ln();
            row.mapv_inplace(|v| if log { v - lse } else { (v - lse).exp() });
        }
        out
    };
    let target = softmax(&logits, false);
    let input = softmax(&logits.mapv(|v| v * 0.9 + 0.05), true);

    let start = std::time::Instant::now();
    let loss = kl_div(input.view(), target.view(), Reduction::BatchMean, false)?;
    let elapsed = start.elapsed();
    println!(
        "KL(target || exp(input)) averaged over {rows} rows of {cols}: {loss:.6} ({:.2} ms on {} threads)",
        elapsed.as_secs_f64() * 1e3,
        kldiv::runtime::get_num_threads()
    );

    let first = kl_div_terms(input.row(0), target.row(0), false)?;
    println!(
        "row 0: sum of terms t * (log t - x) = {:.6}, largest term {:.6}",
        first.sum(),
        first.iter().cloned().fold(f32::MIN, f32::max)
    );
    Ok(())
}
