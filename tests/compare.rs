//! The crate's comparison of two models against the case llama.cpp's own code computed
//! (`tests/fixtures/llamacpp/`, see its README): the `.kld` rows byte for byte, the per-token
//! values to the bit, the summary's printed numbers; and the errors of bad files.

use std::path::PathBuf;

use kldiv::ndarray::{Array1, Array2, ArrayView1};
use kldiv::{compare_kld_rows, compare_logits_rows, kld_base_row, KldHeader, PerToken, Summary};

fn fixture(name: &str) -> Vec<u8> {
    let path: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "tests",
        "fixtures",
        "llamacpp",
        name,
    ]
    .iter()
    .collect();
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The data and shape of a little-endian C-order `.npy` file of 4-byte elements.
fn npy(name: &str) -> (Vec<u8>, Vec<usize>) {
    let raw = fixture(name);
    assert_eq!(&raw[..6], b"\x93NUMPY");
    let len = u16::from_le_bytes([raw[8], raw[9]]) as usize;
    let header = std::str::from_utf8(&raw[10..10 + len]).unwrap();
    assert!(header.contains("'fortran_order': False"), "{header}");
    assert!(header.contains("<f4") || header.contains("<i4"), "{header}");
    let shape = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let shape = shape
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().unwrap())
        .collect();
    (raw[10 + len..].to_vec(), shape)
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

struct Case {
    header: KldHeader,
    tokens: Vec<i32>,
    base: Array2<f32>,
    other: Array2<f32>,
    stored: Array2<u16>,
    /// The scored rows (all windows) and the tokens they predict.
    rows: Vec<usize>,
    next: Array1<i64>,
}

fn case() -> Case {
    let kld = fixture("base.kld");
    let header = KldHeader::parse(&kld, kld.len() as u64).unwrap();
    let (t, _) = npy("tokens.npy");
    let tokens: Vec<i32> = t
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let (b, shape) = npy("base_logits.npy");
    let base = Array2::from_shape_vec((shape[0], shape[1]), f32s(&b)).unwrap();
    let (o, _) = npy("other_logits.npy");
    let other = Array2::from_shape_vec((shape[0], shape[1]), f32s(&o)).unwrap();
    let at = header.rows_offset() as usize;
    let words: Vec<u16> = kld[at..]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    let stored =
        Array2::from_shape_vec((words.len() / header.row_len(), header.row_len()), words).unwrap();
    let (n_ctx, first) = (header.n_ctx, header.first());
    let rows: Vec<usize> = (0..header.n_chunk)
        .flat_map(|c| c * n_ctx + first..c * n_ctx + n_ctx - 1)
        .collect();
    let next = rows.iter().map(|&r| tokens[r + 1] as i64).collect();
    Case {
        header,
        tokens,
        base,
        other,
        stored,
        rows,
        next,
    }
}

#[test]
fn the_header_and_the_tokens_are_llamacpps() {
    let c = case();
    assert_eq!(
        (c.header.n_ctx, c.header.n_vocab, c.header.n_chunk),
        (64, 1000, 8)
    );
    let kld = fixture("base.kld");
    let tokens: Vec<i32> = kld[20..20 + 4 * 512]
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(tokens, c.tokens);
    assert_eq!(&kld[..20], &c.header.to_bytes());
}

#[test]
fn kld_rows_are_written_byte_for_byte() {
    let c = case();
    let mut out = vec![0u16; c.header.row_len()];
    for (i, &r) in c.rows.iter().enumerate() {
        kld_base_row(c.base.row(r).as_slice().unwrap(), &mut out);
        assert_eq!(
            out.as_slice(),
            c.stored.row(i).as_slice().unwrap(),
            "row {r}"
        );
    }
}

/// Per-token outputs (see [`PerToken`]).
struct Values {
    kld: Vec<f64>,
    dp: Vec<f64>,
    top: Vec<u8>,
    nll: Vec<f64>,
    nb: Vec<f64>,
}

impl Values {
    fn new(n: usize) -> Values {
        let z = vec![0.0; n];
        Values {
            kld: z.clone(),
            dp: z.clone(),
            top: vec![0; n],
            nll: z.clone(),
            nb: z,
        }
    }

    fn summary(&self, llama: bool) -> Summary {
        Summary::new(&self.kld, &self.dp, &self.top, &self.nll, &self.nb, llama)
    }

    fn out(&mut self) -> PerToken<'_> {
        PerToken::new(
            &mut self.kld,
            &mut self.dp,
            &mut self.top,
            &mut self.nll,
            &mut self.nb,
        )
    }
}

/// The per-token values of `per_token.tsv`: index, KLD, Δp, same top, NLL, base NLL.
fn per_token() -> Vec<[f64; 6]> {
    let text = String::from_utf8(fixture("per_token.tsv")).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let v: Vec<f64> = l.split('\t').map(|x| x.parse().unwrap()).collect();
            v.try_into().unwrap()
        })
        .collect()
}

#[test]
fn per_token_values_and_summary_are_llamacpps_to_the_bit() {
    let c = case();
    let n = c.rows.len();
    let other = c.other.select(kldiv::ndarray::Axis(0), &c.rows);
    let mut v = Values::new(n);
    compare_kld_rows(other.view(), c.stored.view(), c.next.view(), &mut v.out()).unwrap();
    let want = per_token();
    assert_eq!(want.len(), n);
    for (i, w) in want.iter().enumerate() {
        assert_eq!(v.kld[i], w[1], "KLD of token {i}");
        assert_eq!(v.dp[i] as f32, w[2] as f32, "Δp of token {i}");
        assert_eq!(v.top[i] as f64, w[3], "same top of token {i}");
        assert_eq!(v.nll[i] as f32, w[4] as f32, "NLL of token {i}");
        assert_eq!(v.nb[i] as f32, w[5] as f32, "base NLL of token {i}");
    }
    let s = v.summary(true);
    // stats.txt: "Mean PPL(Q) : 700.999851 ± 205.328697", "Mean KLD: 0.031950 ± 0.002512",
    // "Maximum KLD: 0.641872", "Median KLD: 0.028827", "Same top p: 83.871 ± 2.340 %".
    assert_eq!(
        format!("{:.6} {:.6}", s.ppl.0, s.ppl.1),
        "700.999851 205.328697"
    );
    assert_eq!(
        format!("{:.6} {:.6}", s.kld.0, s.kld.1),
        "0.031950 0.002512"
    );
    assert_eq!(format!("{:.6}", s.kld_quantiles[0].1), "0.641872");
    assert_eq!(format!("{:.6}", s.kld_quantiles[5].1), "0.028827");
    assert_eq!(
        format!("{:.3} {:.3}", 100.0 * s.same_top.0, 100.0 * s.same_top.1),
        "83.871 2.340"
    );
    assert!(s.top5.is_none());
}

#[test]
fn exact_mode_has_no_cut() {
    let c = case();
    let n = c.rows.len();
    let sel = |a: &Array2<f32>| a.select(kldiv::ndarray::Axis(0), &c.rows);
    let (base, other) = (sel(&c.base), sel(&c.other));
    let mut v = Values::new(n);
    compare_logits_rows(base.view(), other.view(), c.next.view(), &mut v.out()).unwrap();
    // Token 8's base log-probability is about -34: llama.cpp clips its NLL near 16.
    assert!((v.nb[8] - 34.23).abs() < 0.01, "{}", v.nb[8]);
    let want = per_token();
    for (i, w) in want.iter().enumerate() {
        assert!(v.kld[i] >= 0.0);
        assert!((v.nll[i] - w[4]).abs() < 1e-5, "token {i}");
    }
    let s = v.summary(false);
    assert!(s.top5.unwrap().0 >= s.same_top.0 && s.top10.unwrap().0 >= s.top5.unwrap().0);
}

#[test]
fn bad_files_and_arguments_are_errors() {
    let kld = fixture("base.kld");
    let short = KldHeader::parse(&kld, kld.len() as u64 - 2)
        .unwrap_err()
        .to_string();
    assert!(short.contains("truncated"), "{short}");
    let long = KldHeader::parse(&kld, kld.len() as u64 + 1)
        .unwrap_err()
        .to_string();
    assert!(long.contains("longer than its header says"), "{long}");
    let mut bad = kld[..20].to_vec();
    bad[0] = b'x';
    assert!(KldHeader::parse(&bad, kld.len() as u64).is_err());
    bad = kld[..20].to_vec();
    bad[12..16].copy_from_slice(&(-5i32).to_le_bytes());
    assert!(KldHeader::parse(&bad, kld.len() as u64).is_err());
    let c = case();
    let other = c.other.select(kldiv::ndarray::Axis(0), &c.rows[..2]);
    let stored = c.stored.slice(kldiv::ndarray::s![..2, ..]);
    let (mut a, mut b, mut d, mut e, mut t) = ([0.0; 2], [0.0; 2], [0.0; 2], [0.0; 2], [0u8; 2]);
    let mut out = PerToken::new(&mut a, &mut b, &mut t, &mut d, &mut e);
    let next: Vec<i64> = vec![3, 1000];
    let err = compare_kld_rows(other.view(), stored, ArrayView1::from(&next), &mut out);
    assert!(err
        .unwrap_err()
        .to_string()
        .contains("token 1000 is not in the vocabulary"));
    let narrow = stored.slice(kldiv::ndarray::s![.., ..1000]);
    let next: Vec<i64> = vec![3, 4];
    let err = compare_kld_rows(other.view(), narrow, ArrayView1::from(&next), &mut out);
    assert!(err
        .unwrap_err()
        .to_string()
        .contains("the base's rows are 2 x 1000"));
}
