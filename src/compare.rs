//! Comparing two models' next-token distributions, the job of llama.cpp's `llama-perplexity
//! --kl-divergence` (`tools/perplexity/perplexity.cpp` in ggml-org/llama.cpp).
//!
//! llama.cpp stores a base model's log-probabilities in a `.kld` file ([`KldHeader`], rows of
//! [`kld_base_row`]), then scores a second model's logits against it token by token
//! ([`compare_kld_rows`]) and summarises ([`Summary`]). Its definitions are kept here exactly:
//! the `uint16` quantisation, the cut of base log-probabilities at −16 (so a token's value can
//! be negative), the `float` arithmetic of its sums and percentiles. [`compare_logits_rows`]
//! computes the same statistics from float logits on both sides exactly: the KL divergence over
//! the whole vocabulary, in `f64`, with nothing cut.
//!
//! Windows: llama.cpp scores positions `n_ctx/2 .. n_ctx-2` of each `n_ctx`-token window, the
//! logits of position `j` predicting token `j + 1` ([`KldHeader::scored`]).

use std::sync::atomic::{AtomicU64, Ordering};

use ndarray::{ArrayView1, ArrayView2, ArrayViewMut1};

use crate::error::Error;
use crate::float::Float;
use crate::logits::{kl_div_logits_rows_into, Divergence, Logit, LogitsLoss};
use crate::math::{exp_f64, ln_f64};
use crate::parallel::for_each_task;
use crate::simd::{dispatch, Kernel};

/// The header of a llama.cpp `.kld` base file: the magic `_logits_`, then `n_ctx`, `n_vocab`
/// and `n_chunk` as little-endian `i32`, then the `n_chunk * n_ctx` tokens (`i32`), then, for
/// every window, its [`scored`](Self::scored) rows of [`row_len`](Self::row_len) `u16`.
///
/// # Example
/// ```
/// use kldiv::KldHeader;
/// let h = KldHeader::new(64, 1000, 8).unwrap();
/// let bytes = h.to_bytes();
/// assert_eq!(&bytes[..8], b"_logits_");
/// assert_eq!(KldHeader::parse(&bytes, h.file_len()).unwrap(), h);
/// assert_eq!((h.scored(), h.row_len()), (31, 1004));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KldHeader {
    /// The window length in tokens.
    pub n_ctx: usize,
    /// The vocabulary size.
    pub n_vocab: usize,
    /// The number of windows.
    pub n_chunk: usize,
}

impl KldHeader {
    /// The bytes of the header before the tokens.
    pub const LEN: usize = 20;
    /// The file's first eight bytes.
    pub const MAGIC: &'static [u8; 8] = b"_logits_";

    /// A header, checked: `n_ctx` at least 3 (so that a window scores a token), a vocabulary
    /// of at least one entry, sizes that fit llama.cpp's `i32` fields.
    ///
    /// # Errors
    /// [`Error::Argument`] otherwise.
    ///
    /// # Example
    /// ```
    /// assert!(kldiv::KldHeader::new(2, 1000, 1).is_err());
    /// ```
    pub fn new(n_ctx: usize, n_vocab: usize, n_chunk: usize) -> Result<KldHeader, Error> {
        let fits = |v: usize| v <= i32::MAX as usize;
        if n_ctx < 3 || n_vocab == 0 || !fits(n_ctx) || !fits(n_vocab) || !fits(n_chunk) {
            return Err(Error::Argument(format!(
                "a llama.cpp KL-divergence base needs n_ctx >= 3 and a vocabulary of at least \
                 one entry, each below 2^31; got n_ctx {n_ctx}, vocabulary {n_vocab}, \
                 {n_chunk} windows"
            )));
        }
        Ok(KldHeader {
            n_ctx,
            n_vocab,
            n_chunk,
        })
    }

    /// The header of a file of `file_len` bytes that starts with `head` (at least
    /// [`LEN`](Self::LEN) bytes), checked against that length.
    ///
    /// # Errors
    /// [`Error::Argument`], one line, where the magic is missing, a field is out of range or
    /// the file is shorter or longer than its header says (truncated or not a `.kld` file).
    ///
    /// # Example
    /// ```
    /// use kldiv::KldHeader;
    /// let h = KldHeader::new(8, 10, 2).unwrap();
    /// let err = KldHeader::parse(&h.to_bytes(), h.file_len() - 1).unwrap_err();
    /// assert!(err.to_string().contains("truncated"));
    /// ```
    pub fn parse(head: &[u8], file_len: u64) -> Result<KldHeader, Error> {
        if head.len() < Self::LEN || &head[..8] != Self::MAGIC {
            return Err(Error::Argument(
                "not a llama.cpp KL-divergence base file (it does not start with '_logits_' \
                 and its three sizes)"
                    .into(),
            ));
        }
        let field = |i: usize| i32::from_le_bytes(head[i..i + 4].try_into().expect("4 bytes"));
        let (n_ctx, n_vocab, n_chunk) = (field(8), field(12), field(16));
        let size = |v: i32| usize::try_from(v).unwrap_or(usize::MAX);
        let h = KldHeader::new(size(n_ctx), size(n_vocab), size(n_chunk))?;
        let want = h.file_len();
        if file_len != want {
            let what = if file_len < want {
                "truncated"
            } else {
                "longer than its header says"
            };
            return Err(Error::Argument(format!(
                "the llama.cpp KL-divergence base file is {what}: n_ctx {n_ctx}, vocabulary \
                 {n_vocab} and {n_chunk} windows make {want} bytes, the file has {file_len}"
            )));
        }
        Ok(h)
    }

    /// The header's [`LEN`](Self::LEN) bytes, as llama.cpp writes them.
    ///
    /// # Example
    /// ```
    /// let b = kldiv::KldHeader::new(512, 32000, 1).unwrap().to_bytes();
    /// assert_eq!(i32::from_le_bytes(b[12..16].try_into().unwrap()), 32000);
    /// ```
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut b = [0; Self::LEN];
        b[..8].copy_from_slice(Self::MAGIC);
        for (i, v) in [self.n_ctx, self.n_vocab, self.n_chunk]
            .into_iter()
            .enumerate()
        {
            b[8 + 4 * i..12 + 4 * i].copy_from_slice(&(v as i32).to_le_bytes());
        }
        b
    }

    /// The `u16`s of a stored row: two `f32` (the scale and the minimum log-probability) and
    /// the vocabulary, rounded up to an even count.
    ///
    /// # Example
    /// ```
    /// assert_eq!(kldiv::KldHeader::new(4, 5, 1).unwrap().row_len(), 10);
    /// ```
    pub fn row_len(&self) -> usize {
        Self::row_len_of(self.n_vocab)
    }

    /// [`row_len`](Self::row_len) for a vocabulary of `n_vocab` entries.
    ///
    /// # Example
    /// ```
    /// assert_eq!(kldiv::KldHeader::row_len_of(32000), 32004);
    /// ```
    pub fn row_len_of(n_vocab: usize) -> usize {
        2 * n_vocab.div_ceil(2) + 4
    }

    /// The position of a window's first scored row, `n_ctx / 2`.
    ///
    /// # Example
    /// ```
    /// assert_eq!(kldiv::KldHeader::new(64, 5, 1).unwrap().first(), 32);
    /// ```
    pub fn first(&self) -> usize {
        self.n_ctx / 2
    }

    /// The rows scored in a window, `n_ctx - 1 - n_ctx/2` (the last position has no next token).
    ///
    /// # Example
    /// ```
    /// assert_eq!(kldiv::KldHeader::new(64, 5, 1).unwrap().scored(), 31);
    /// ```
    pub fn scored(&self) -> usize {
        self.n_ctx - 1 - self.first()
    }

    /// The offset of the stored rows, after the header and the tokens.
    ///
    /// # Example
    /// ```
    /// assert_eq!(kldiv::KldHeader::new(64, 5, 2).unwrap().rows_offset(), 20 + 4 * 128);
    /// ```
    pub fn rows_offset(&self) -> u64 {
        Self::LEN as u64 + 4 * (self.n_ctx as u64) * (self.n_chunk as u64)
    }

    /// The size of the whole file in bytes.
    ///
    /// # Example
    /// ```
    /// let h = kldiv::KldHeader::new(64, 1000, 8).unwrap();
    /// assert_eq!(h.file_len(), 500_052);
    /// ```
    pub fn file_len(&self) -> u64 {
        let rows = (self.n_chunk as u64) * (self.scored() as u64);
        self.rows_offset() + rows * (self.row_len() as u64) * 2
    }
}

/// llama.cpp's rounding of a `float` to the nearest integer (ties to even), for `|v| < 2^22`.
fn nearest_int(v: f32) -> i32 {
    let bits = (v + 12_582_912.0).to_bits() as i32;
    (bits & 0x007f_ffff) - 0x0040_0000
}

/// One row of a `.kld` base file from a row of logits, as llama.cpp writes it: the row's
/// maximum `M` and `m = max(min, M - 16)`, the scale `(M - m) / 65535` and `m - M - ln Σ
/// e^(z - M)` as two `f32` in the first four `u16`, then each logit above `m` as `round((z -
/// m) / scale)`, the others 0. `out` holds [`KldHeader::row_len`] values; an odd
/// vocabulary's padding is left as it is (llama.cpp's is 0). In `f32` as llama.cpp computes
/// it, with the platform's `expf` and `log`, so that the bytes are llama.cpp's.
///
/// # Panics
/// If `out` is shorter than the row plus 4.
///
/// # Example
/// ```
/// let mut out = [0u16; 8];
/// kldiv::kld_base_row(&[0.0, 1.0, 2.0, -30.0], &mut out);
/// assert_eq!(f32::from_bits(out[0] as u32 | (out[1] as u32) << 16), 16.0 / 65535.0);
/// assert_eq!(&out[4..], &[57343, 61439, 65535, 0]);
/// ```
pub fn kld_base_row(logits: &[f32], out: &mut [u16]) {
    let n = logits.len();
    assert!(
        out.len() >= n + 4,
        "a .kld row holds the vocabulary and 4 more"
    );
    let (mut max, mut min) = (logits[0], logits[0]);
    for &v in &logits[1..] {
        max = max.max(v);
        min = min.min(v);
    }
    min = min.max(max - 16.0);
    let mut sum = 0.0_f64;
    for &v in logits {
        sum += expf(v - max) as f64;
    }
    let lse = sum.ln() as f32;
    let min_log_prob = min - max - lse;
    let scale = (max - min) / 65535.0;
    let (s, m) = (scale.to_bits(), min_log_prob.to_bits());
    out[..4].copy_from_slice(&[s as u16, (s >> 16) as u16, m as u16, (m >> 16) as u16]);
    let row = &mut out[4..4 + n];
    if scale != 0.0 {
        let inv = 1.0 / scale;
        for (o, &v) in row.iter_mut().zip(logits) {
            *o = if v > min {
                nearest_int(inv * (v - min)) as u16
            } else {
                0
            };
        }
    } else {
        row.fill(0);
    }
}

/// A stored row's log-probability of entry `q` as llama.cpp reads it: `scale q + min`, in
/// `f32` (not fused).
#[inline(always)]
fn stored_log_prob(scale: f32, min_log_prob: f32, q: u16) -> f32 {
    scale * q as f32 + min_log_prob
}

/// The log-probabilities a stored `.kld` row holds (see [`kld_base_row`]) for the
/// vocabulary's `out.len()` entries, as llama.cpp reads them: the entries below the row's cut
/// (−16 under its maximum) read as the cut.
///
/// # Panics
/// If `stored` holds fewer than `out.len() + 4` values.
///
/// # Example
/// ```
/// let logits = [0.0_f32, 1.0, 2.0, -30.0];
/// let mut row = [0u16; 8];
/// kldiv::kld_base_row(&logits, &mut row);
/// let mut lp = [0.0_f32; 4];
/// kldiv::kld_log_probs(&row, &mut lp);
/// let lse = logits.iter().map(|&z| (z as f64).exp()).sum::<f64>().ln();
/// assert!((lp[2] as f64 - (2.0 - lse)).abs() < 1e-3);
/// assert!((lp[3] as f64 - (-14.0 - lse)).abs() < 1e-3); // -30 reads as the cut, 2 - 16
/// ```
pub fn kld_log_probs(stored: &[u16], out: &mut [f32]) {
    assert!(
        stored.len() >= out.len() + 4,
        "a .kld row holds the vocabulary and 4 more"
    );
    let (scale, min_log_prob) = (stored_f32(stored, 0), stored_f32(stored, 2));
    for (o, &q) in out.iter_mut().zip(&stored[4..]) {
        *o = stored_log_prob(scale, min_log_prob, q);
    }
}

/// The per-token values of a comparison, one a scored token: the KL divergence from the base
/// distribution to the other's, `Δp = p - p_base` (the change in the probability of the actual
/// next token), whether the two top tokens agree, the negative log-likelihoods of the next token
/// under the other model and the base, and (float logits on both sides) whether the base's top
/// token is among the other's top 5 and top 10.
///
/// # Example
/// ```
/// use kldiv::PerToken;
/// let mut v = vec![0.0; 4];
/// let (mut a, mut b, mut c, mut d) = (v.clone(), v.clone(), v.clone(), v.clone());
/// let mut top = vec![0u8; 4];
/// let out = PerToken::new(&mut v, &mut a, &mut top, &mut b, &mut c);
/// assert_eq!(out.len(), 4);
/// ```
pub struct PerToken<'a> {
    kld: &'a mut [f64],
    delta_p: &'a mut [f64],
    /// Bit 0: the top tokens agree; bit 1: the base's top token is in the other's top 5; bit
    /// 2: in its top 10.
    top: &'a mut [u8],
    nll: &'a mut [f64],
    nll_base: &'a mut [f64],
}

impl<'a> PerToken<'a> {
    /// The outputs, of one length each.
    ///
    /// # Panics
    /// If their lengths differ.
    ///
    /// # Example
    /// See [`PerToken`].
    pub fn new(
        kld: &'a mut [f64],
        delta_p: &'a mut [f64],
        top: &'a mut [u8],
        nll: &'a mut [f64],
        nll_base: &'a mut [f64],
    ) -> PerToken<'a> {
        let n = kld.len();
        assert!(
            [delta_p.len(), top.len(), nll.len(), nll_base.len()]
                .iter()
                .all(|&m| m == n),
            "the per-token outputs have one length"
        );
        PerToken {
            kld,
            delta_p,
            top,
            nll,
            nll_base,
        }
    }

    /// The number of tokens.
    ///
    /// # Example
    /// See [`PerToken`].
    pub fn len(&self) -> usize {
        self.kld.len()
    }

    /// Whether there are none.
    ///
    /// # Example
    /// ```
    /// let out = kldiv::PerToken::new(&mut [], &mut [], &mut [], &mut [], &mut []);
    /// assert!(out.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.kld.is_empty()
    }
}

/// One token's values (see [`PerToken`]), as `f64` bits and the flags.
#[derive(Clone, Copy, Default)]
struct TokenRow {
    kld: f64,
    delta_p: f64,
    top: u8,
    nll: f64,
    nll_base: f64,
}

/// Runs `each` over the groups of `group` consecutive rows (the last may be short) of `rows`
/// rows of `vocab` entries on kldiv's pool, and writes the values it returns, a row each, into
/// `out` in row order.
fn per_group<S: Default>(
    rows: usize,
    vocab: usize,
    group: usize,
    out: &mut PerToken<'_>,
    each: impl Fn(std::ops::Range<usize>, &mut S) -> Vec<TokenRow> + Sync,
) -> Result<(), Error> {
    // Five words a row, written by its group's task alone.
    let cells: Vec<AtomicU64> = (0..rows * 5).map(|_| AtomicU64::new(0)).collect();
    for_each_task(rows * vocab, rows.div_ceil(group), |k, scratch: &mut S| {
        let range = k * group..((k + 1) * group).min(rows);
        for (r, v) in range.clone().zip(each(range, scratch)) {
            let words = [v.kld, v.delta_p, v.nll, v.nll_base].map(f64::to_bits);
            for (j, w) in words.into_iter().chain([v.top as u64]).enumerate() {
                cells[5 * r + j].store(w, Ordering::Relaxed);
            }
        }
    })?;
    let word = |r: usize, j: usize| cells[5 * r + j].load(Ordering::Relaxed);
    for r in 0..rows {
        out.kld[r] = f64::from_bits(word(r, 0));
        out.delta_p[r] = f64::from_bits(word(r, 1));
        out.nll[r] = f64::from_bits(word(r, 2));
        out.nll_base[r] = f64::from_bits(word(r, 3));
        out.top[r] = word(r, 4) as u8;
    }
    Ok(())
}

/// Checks the counts of a comparison (a next token and an output a row) and that every next
/// token is in the vocabulary, so that the rows can index it as it is.
fn check_rows(
    what: &str,
    rows: usize,
    vocab: usize,
    next: ArrayView1<'_, i64>,
    out: usize,
) -> Result<(), Error> {
    if rows != next.len() || rows != out {
        return Err(Error::Argument(format!(
            "{what} has {rows} rows but there are {} next tokens and {out} outputs",
            next.len()
        )));
    }
    match next
        .iter()
        .find(|&&t| usize::try_from(t).map_or(true, |t| t >= vocab))
    {
        Some(t) => Err(Error::Argument(format!(
            "token {t} is not in the vocabulary of {vocab} entries"
        ))),
        None => Ok(()),
    }
}

/// Scores rows of a model's logits against a `.kld` base's stored rows, as llama.cpp's
/// per-token `log_softmax(n_vocab, logits, base_log_prob, tok, kld)` does: `other` holds the
/// logits of the scored positions (`rows x n_vocab`), `base` their stored rows (`rows x
/// row_len`), `next` the token each predicts. Per token: `nll = M + ln Σ e^(z - M) - z[tok]`,
/// `nll_base = -(scale b[tok] + min)`, the KL `Σ p_base (ln p_base - ln q)` over the entries
/// with a base log-probability above −16, `Δp = e^-nll - e^-nll_base`, and whether the
/// first maximum of each side is at the same entry. In `f32` where llama.cpp computes in
/// `float` (the sums in `f64`); rows over kldiv's pool.
///
/// # Errors
/// [`Error::Argument`] where the row counts or widths disagree or a token is not in the
/// vocabulary.
///
/// # Example
/// ```
/// use kldiv::{compare_kld_rows, kld_base_row, PerToken};
/// use ndarray::{array, Array2};
/// let logits = array![[1.0_f32, 2.0, 3.0, 0.5]];
/// let mut base = Array2::<u16>::zeros((1, 8));
/// kld_base_row(logits.as_slice().unwrap(), base.as_slice_mut().unwrap());
/// let (mut kld, mut dp, mut nll, mut nb, mut top) = ([0.0], [0.0], [0.0], [0.0], [0u8]);
/// let mut out = PerToken::new(&mut kld, &mut dp, &mut top, &mut nll, &mut nb);
/// compare_kld_rows(logits.view(), base.view(), array![2].view(), &mut out).unwrap();
/// assert!(kld[0].abs() < 1e-4 && top[0] == 1);
/// ```
pub fn compare_kld_rows<L: Logit<C = f32>>(
    other: ArrayView2<'_, L>,
    base: ArrayView2<'_, u16>,
    next: ArrayView1<'_, i64>,
    out: &mut PerToken<'_>,
) -> Result<(), Error> {
    let (rows, vocab) = other.dim();
    check_rows("the other model's logits", rows, vocab, next, out.len())?;
    let row_len = KldHeader::row_len_of(vocab);
    if base.dim() != (rows, row_len) {
        return Err(Error::Argument(format!(
            "the base's rows are {} x {} u16 but {rows} rows of a vocabulary of {vocab} need \
             {rows} x {row_len}",
            base.nrows(),
            base.ncols()
        )));
    }
    per_group(
        rows,
        vocab,
        GROUP,
        out,
        |range, scratch: &mut KldScratch| {
            let KldScratch { z, b, e } = scratch;
            // A short group repeats its first row (its values are dropped).
            let row = |g: usize| {
                if range.start + g < range.end {
                    range.start + g
                } else {
                    range.start
                }
            };
            // Rows read in place where they are contiguous `f32` / `u16`, else copied.
            let zin: [Option<&[f32]>; GROUP] =
                std::array::from_fn(|g| other.row(row(g)).to_slice().and_then(L::as_compute));
            let bin: [Option<&[u16]>; GROUP] = std::array::from_fn(|g| base.row(row(g)).to_slice());
            for g in 0..GROUP {
                if zin[g].is_none() {
                    z[g].clear();
                    z[g].extend(other.row(row(g)).iter().map(|&v| v.widen()));
                }
                if bin[g].is_none() {
                    b[g].clear();
                    b[g].extend(base.row(row(g)).iter());
                }
            }
            let (z, b) = (&*z, &*b);
            let rows = dispatch(KldGroup {
                z: std::array::from_fn(|g| zin[g].unwrap_or(&z[g][..])),
                b: std::array::from_fn(|g| bin[g].unwrap_or(&b[g][..])),
                tok: std::array::from_fn(|g| next[row(g)] as usize), // checked
                e,
            });
            rows[..range.len()].to_vec()
        },
    )
}

/// Rows of [`compare_kld_rows`] computed together: each row's sums run in token order (as
/// llama.cpp's, so that the bits are its), a chain of dependent additions, and the chains of a
/// group's rows interleave.
const GROUP: usize = 4;

/// A thread's rows of a group, widened, and a buffer a row.
#[derive(Default)]
struct KldScratch {
    z: [Vec<f32>; GROUP],
    b: [Vec<u16>; GROUP],
    e: [Vec<f32>; GROUP],
}

/// A group of rows of [`compare_kld_rows`] as a [`Kernel`] (run at the SIMD level).
struct KldGroup<'a> {
    z: [&'a [f32]; GROUP],
    b: [&'a [u16]; GROUP],
    tok: [usize; GROUP],
    e: &'a mut [Vec<f32>; GROUP],
}

impl Kernel for KldGroup<'_> {
    type Output = [TokenRow; GROUP];
    fn log_target(&self) -> bool {
        false
    }
    #[inline(always)]
    fn run<const LOG_TARGET: bool>(self) -> [TokenRow; GROUP] {
        kld_group(self.z, self.b, self.tok, self.e)
    }
}

/// The sums, in order and in `f64`, of each of the group's buffers (of one length): each a
/// chain of dependent additions, the group's chains interleaved, over pieces widened to `f64`
/// first (in one vectorised loop) so that the chains only add.
#[inline(always)]
fn ordered_sums(e: &[Vec<f32>; GROUP], n: usize) -> [f64; GROUP] {
    const PIECE: usize = 512;
    let mut wide = [[0.0_f64; PIECE]; GROUP];
    let mut sums = [0.0_f64; GROUP];
    for start in (0..n).step_by(PIECE) {
        let len = PIECE.min(n - start);
        for g in 0..GROUP {
            for (w, &v) in wide[g][..len].iter_mut().zip(&e[g][start..start + len]) {
                *w = v as f64;
            }
        }
        // Element by element, each row's chain in turn (rows side by side in memory would
        // make the widening a scatter: twice as slow).
        #[allow(clippy::needless_range_loop)]
        for i in 0..len {
            for g in 0..GROUP {
                sums[g] += wide[g][i];
            }
        }
    }
    sums
}

/// The first maximum of a row as llama.cpp finds it (`if (v > max)` from element 0: a NaN
/// there stays the maximum, NaNs after it are passed over) and its index.
#[inline(always)]
fn first_max<C: Float>(z: &[C]) -> (C, usize) {
    if z[0].to_f64().is_nan() {
        return (z[0], 0);
    }
    let max = z.iter().fold(z[0], |m, &v| m.max(v));
    // The chunk that holds it (each chunk's test in one vectorised loop), then its place.
    const CHUNK: usize = 256;
    for (c, chunk) in z.chunks(CHUNK).enumerate() {
        if chunk.iter().fold(false, |any, &v| any | (v == max)) {
            let at = chunk.iter().position(|&v| v == max).unwrap_or(0);
            return (max, c * CHUNK + at);
        }
    }
    (max, 0)
}

/// The tokens of a [`KldGroup`] (see [`compare_kld_rows`] for what each is).
#[inline(always)]
fn kld_group(
    z: [&[f32]; GROUP],
    b: [&[u16]; GROUP],
    tok: [usize; GROUP],
    e: &mut [Vec<f32>; GROUP],
) -> [TokenRow; GROUP] {
    let n = z[0].len();
    let mut pieces = ExpfPieces::new();
    let mut max = [(0.0, 0); GROUP];
    for g in 0..GROUP {
        max[g] = first_max(z[g]);
        let m = max[g].0;
        e[g].resize(n, 0.0);
        pieces.expf_sub(z[g], m, &mut e[g]);
    }
    let sum_exp = ordered_sums(e, n);
    let mut out = [TokenRow::default(); GROUP];
    let mut imax_base = [0; GROUP];
    for g in 0..GROUP {
        let (z, b, tok) = (z[g], b[g], tok[g]);
        let (scale, min_log_prob) = (stored_f32(b, 0), stored_f32(b, 2));
        let b = &b[4..4 + n];
        let lse = sum_exp[g].ln() as f32;
        let nll = max[g].0 + lse - z[tok];
        let log_base = |q: u16| stored_log_prob(scale, min_log_prob, q);
        let nll_base = -log_base(b[tok]);
        let shift = max[g].0 + lse;
        // The base's log-probabilities, their first maximum, then the terms in their place
        // (each loop vectorises: no branch around `expf`, a select after it).
        let lb = &mut e[g][..n];
        for (o, &q) in lb.iter_mut().zip(b) {
            *o = log_base(q);
        }
        imax_base[g] = first_max(lb).1;
        let mut p = [0.0_f32; EXPF_PIECE];
        for (lb, z) in lb.chunks_mut(EXPF_PIECE).zip(z.chunks(EXPF_PIECE)) {
            let p = &mut p[..lb.len()];
            pieces.expf_sub(lb, 0.0, p);
            for ((o, &v), &p) in lb.iter_mut().zip(z).zip(p.iter()) {
                let l = *o;
                *o = if l > -16.0 { p * (l - v + shift) } else { 0.0 };
            }
        }
        let delta_p = expf(-nll) - expf(-nll_base);
        out[g] = TokenRow {
            kld: 0.0,
            delta_p: delta_p as f64,
            top: (max[g].1 == imax_base[g]) as u8,
            nll: nll as f64,
            nll_base: nll_base as f64,
        };
    }
    let kld = ordered_sums(e, n);
    for g in 0..GROUP {
        out[g].kld = kld[g];
    }
    out
}

/// The `f32` stored at `u16`s `i`, `i + 1` of a base row.
fn stored_f32(b: &[u16], i: usize) -> f32 {
    f32::from_bits(b[i] as u32 | (b[i + 1] as u32) << 16)
}

/// `2^(i/32)` as `f64` bits, less `i << 47` (glibc's `__exp2f_data.tab`).
const EXP2F_TAB: [u64; 32] = [
    0x3ff0000000000000,
    0x3fefd9b0d3158574,
    0x3fefb5586cf9890f,
    0x3fef9301d0125b51,
    0x3fef72b83c7d517b,
    0x3fef54873168b9aa,
    0x3fef387a6e756238,
    0x3fef1e9df51fdee1,
    0x3fef06fe0a31b715,
    0x3feef1a7373aa9cb,
    0x3feedea64c123422,
    0x3feece086061892d,
    0x3feebfdad5362a27,
    0x3feeb42b569d4f82,
    0x3feeab07dd485429,
    0x3feea47eb03a5585,
    0x3feea09e667f3bcd,
    0x3fee9f75e8ec5f74,
    0x3feea11473eb0187,
    0x3feea589994cce13,
    0x3feeace5422aa0db,
    0x3feeb737b0cdc5e5,
    0x3feec49182a3f090,
    0x3feed503b23e255d,
    0x3feee89f995ad3ad,
    0x3feeff76f2fb5e47,
    0x3fef199bdd85529c,
    0x3fef3720dcef9069,
    0x3fef5818dcfba487,
    0x3fef7c97337b9b5f,
    0x3fefa4afa2a490da,
    0x3fefd0765b6e4540,
];

/// `expf` as llama.cpp calls it on Linux: glibc's (from Arm's optimized routines; its x86-64
/// build with FMA, which glibc picks on every CPU that has FMA), step for step in `f64`, so
/// that the per-token values are llama.cpp's to the bit: the same bits as the C library's
/// `expf` on every `f32` (`make test-exhaustive`; glibc's build without FMA differs in one).
/// glibc's special cases need no branch here: the clamp keeps NaN, and its ends give 0 below
/// log(2^-150) and inf above log(2^128). Without them W13 ran 10% faster.
#[inline(always)]
fn expf(x: f32) -> f32 {
    let (r, ki) = expf_reduce(x, 0.0);
    expf_finish(r, expf_scale(ki))
}

/// The entries of glibc's table of `2^(i/N)`.
const EXPF_N: f64 = 32.0;

/// The elements of a piece of [`ExpfPieces::expf_sub`]: the buffers (4 KiB) and the piece
/// stay in L1.
const EXPF_PIECE: usize = 256;

/// [`expf`]'s first step on `x - sub`: `r` and the bits of `kd`, whose low bits hold `k`
/// (`32 x / ln 2 = k + r`).
#[inline(always)]
fn expf_reduce(x: f32, sub: f32) -> (f64, u64) {
    const INV_LN2_N: f64 = f64::from_bits(0x3ff7_1547_652b_82fe) * EXPF_N;
    const SHIFT: f64 = f64::from_bits(0x4338_0000_0000_0000); // 0x1.8p52
    let xd = (x - sub).clamp(-104.0, 89.0) as f64;
    let kd = INV_LN2_N.mul_add(xd, SHIFT);
    (INV_LN2_N.mul_add(xd, -(kd - SHIFT)), kd.to_bits())
}

/// [`expf`]'s second step: the bits of `2^(k/32)` from the table.
#[inline(always)]
fn expf_scale(ki: u64) -> u64 {
    EXP2F_TAB[(ki % 32) as usize].wrapping_add(ki << 47)
}

/// [`expf`]'s last step: the polynomial in `r`, times the scale `s` (as bits), rounded.
#[inline(always)]
fn expf_finish(r: f64, s: u64) -> f32 {
    const C0: f64 = f64::from_bits(0x3fac_6af8_4b91_2394) / (EXPF_N * EXPF_N * EXPF_N);
    const C1: f64 = f64::from_bits(0x3fce_bfce_50fa_c4f3) / (EXPF_N * EXPF_N);
    const C2: f64 = f64::from_bits(0x3fe6_2e42_ff0c_52d6) / EXPF_N;
    let z = C0.mul_add(r, C1);
    let y = C2.mul_add(r, 1.0);
    (z.mul_add(r * r, y) * f64::from_bits(s)) as f32
}

/// The buffers of [`expf`]'s steps over a piece: a thread's, made once for a group of rows
/// (zeroing them for each piece cost 5% of W13 on one thread).
struct ExpfPieces {
    r: [f64; EXPF_PIECE],
    k: [u64; EXPF_PIECE],
}

impl ExpfPieces {
    fn new() -> ExpfPieces {
        ExpfPieces {
            r: [0.0; EXPF_PIECE],
            k: [0; EXPF_PIECE],
        }
    }

    /// `out[i] = expf(x[i] - sub)`, [`expf`]'s three steps as three loops over pieces in L1:
    /// each loop then keeps its constants in registers, and the table's loads do not hold up
    /// the arithmetic (15% faster than one loop on Zen 2).
    #[inline(always)]
    fn expf_sub(&mut self, x: &[f32], sub: f32, out: &mut [f32]) {
        for (x, out) in x.chunks(EXPF_PIECE).zip(out.chunks_mut(EXPF_PIECE)) {
            let (r, k) = (&mut self.r[..x.len()], &mut self.k[..x.len()]);
            for ((r, k), &x) in r.iter_mut().zip(k.iter_mut()).zip(x) {
                (*r, *k) = expf_reduce(x, sub);
            }
            for k in k.iter_mut() {
                *k = expf_scale(*k);
            }
            for ((o, &r), &s) in out.iter_mut().zip(r.iter()).zip(k.iter()) {
                *o = expf_finish(r, s);
            }
        }
    }
}

/// Scores rows of a model's logits against a base model's logits exactly: per token the KL
/// divergence `Σ P (ln P - ln Q)` from the base's distribution `P` to the other's `Q` over the
/// whole vocabulary (the crate's forward KL from logits, `T = 1`), `nll` and `nll_base` from
/// `f64` log-sum-exps, `Δp = e^-nll - e^-nll_base`, whether the top tokens agree (each side's
/// first maximum), and whether the base's top token is among the other's top 5 and top 10
/// (ties counted in index order).
///
/// # Errors
/// [`Error::Argument`] where the shapes or counts disagree or a token is not in the
/// vocabulary; the errors of [`kl_div_logits_rows_into`].
///
/// # Example
/// ```
/// use kldiv::{compare_logits_rows, PerToken};
/// use ndarray::array;
/// let base = array![[1.0_f32, 2.0, 3.0]];
/// let other = array![[1.0_f32, 3.0, 2.0]];
/// let (mut kld, mut dp, mut nll, mut nb, mut top) = ([0.0], [0.0], [0.0], [0.0], [0u8]);
/// let mut out = PerToken::new(&mut kld, &mut dp, &mut top, &mut nll, &mut nb);
/// compare_logits_rows(base.view(), other.view(), array![2].view(), &mut out).unwrap();
/// assert!(kld[0] > 0.0);
/// assert_eq!(top[0], 0b110); // not the same top token, but in the other's top 5 and 10
/// ```
pub fn compare_logits_rows<B: Logit, O: Logit<C = B::C>>(
    base: ArrayView2<'_, B>,
    other: ArrayView2<'_, O>,
    next: ArrayView1<'_, i64>,
    out: &mut PerToken<'_>,
) -> Result<(), Error> {
    let (rows, vocab) = other.dim();
    check_rows("the other model's logits", rows, vocab, next, out.len())?;
    if base.dim() != other.dim() {
        return Err(Error::Argument(format!(
            "the base's logits are {} x {} but the other model's are {rows} x {vocab}",
            base.nrows(),
            base.ncols()
        )));
    }
    let mut kld = vec![0.0; rows];
    let loss = LogitsLoss::new(Divergence::Forward);
    kl_div_logits_rows_into(other, base, &loss, &mut kld)?;
    per_group(
        rows,
        vocab,
        1,
        out,
        |range, bufs: &mut (Vec<f64>, Vec<f64>)| {
            let r = range.start;
            let (zb, zo) = bufs;
            zb.clear();
            zb.extend(base.row(r).iter().map(|&v| v.widen().to_f64()));
            zo.clear();
            zo.extend(other.row(r).iter().map(|&v| v.widen().to_f64()));
            let tok = next[r] as usize; // checked
            let (lse_b, imax_b) = lse_argmax(zb);
            let (lse_o, imax_o) = lse_argmax(zo);
            // The base's top token's rank among the other's entries.
            let at = zo[imax_b];
            let rank = zo[..imax_b].iter().filter(|&&v| v >= at).count()
                + zo[imax_b + 1..].iter().filter(|&&v| v > at).count();
            let (nll, nll_base) = (lse_o - zo[tok], lse_b - zb[tok]);
            vec![TokenRow {
                kld: kld[r],
                delta_p: exp_f64(-nll) - exp_f64(-nll_base),
                top: (imax_o == imax_b) as u8 | ((rank < 5) as u8) << 1 | ((rank < 10) as u8) << 2,
                nll,
                nll_base,
            }]
        },
    )
}

/// `ln Σ e^z` of a row in `f64` and the index of its first maximum.
fn lse_argmax(z: &[f64]) -> (f64, usize) {
    let (max, imax) = first_max(z);
    let sum: f64 = z.iter().map(|&v| exp_f64(v - max)).sum();
    (max + ln_f64(sum), imax)
}

/// A value and its uncertainty (one standard error).
pub type Estimate = (f64, f64);

/// The summary of a comparison, llama.cpp's final statistics: the perplexities of both models
/// and their ratio, the KL divergence's mean, extremes and percentiles, the same of `Δp`, its
/// root mean square, and how often the top tokens agree (with float logits on both sides, also
/// the base's top token in the other's top 5 and 10). Uncertainties as llama.cpp computes
/// them.
///
/// # Example
/// ```
/// use kldiv::Summary;
/// let kld = [0.1, 0.2, 0.3];
/// let zero = [0.0; 3];
/// let s = Summary::new(&kld, &zero, &[1, 1, 0], &[1.0; 3], &[1.0; 3], false);
/// assert!((s.kld.0 - 0.2).abs() < 1e-12);
/// assert!((s.same_top.0 - 2.0 / 3.0).abs() < 1e-12);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// The number of scored tokens.
    pub count: usize,
    /// `PPL(Q) = e^mean(nll)`.
    pub ppl: Estimate,
    /// `PPL(base)`.
    pub ppl_base: Estimate,
    /// The correlation of `ln PPL(Q)` and `ln PPL(base)` (of the per-token NLLs).
    pub cor: f64,
    /// `ln(PPL(Q)/PPL(base))`.
    pub log_ppl_ratio: Estimate,
    /// `PPL(Q)/PPL(base)`.
    pub ppl_ratio: Estimate,
    /// `PPL(Q) - PPL(base)`.
    pub ppl_diff: Estimate,
    /// The mean KL divergence.
    pub kld: Estimate,
    /// `(fraction, value)` of the KL divergence: 1 (maximum), 0.999, 0.99, 0.95, 0.9, 0.5
    /// (median), 0.1, 0.05, 0.01, 0.001, 0 (minimum).
    pub kld_quantiles: Vec<(f64, f64)>,
    /// The mean `Δp`.
    pub delta_p: Estimate,
    /// `(fraction, value)` of `Δp`: 1, 0.999, 0.99, 0.95, 0.9, 0.75, 0.5, 0.25, 0.1, 0.05,
    /// 0.01, 0.001, 0.
    pub delta_p_quantiles: Vec<(f64, f64)>,
    /// The root mean square of `Δp`.
    pub delta_p_rms: Estimate,
    /// How often the top tokens agree.
    pub same_top: Estimate,
    /// How often the base's top token is in the other's top 5 and top 10 (float logits on both
    /// sides: `exact`).
    pub top5: Option<Estimate>,
    /// See `top5`.
    pub top10: Option<Estimate>,
}

/// The fractions of [`Summary::kld_quantiles`].
const KLD_FRACTIONS: [f64; 11] = [
    1.0, 0.999, 0.99, 0.95, 0.9, 0.5, 0.1, 0.05, 0.01, 0.001, 0.0,
];
/// The fractions of [`Summary::delta_p_quantiles`].
const DP_FRACTIONS: [f64; 13] = [
    1.0, 0.999, 0.99, 0.95, 0.9, 0.75, 0.5, 0.25, 0.1, 0.05, 0.01, 0.001, 0.0,
];

/// llama.cpp's mean and its standard error from a sum and a sum of squares (0 for 10 values
/// or fewer).
fn mean_and_uncertainty(sum: f64, sum2: f64, count: usize) -> Estimate {
    if count < 1 {
        return (0.0, 0.0);
    }
    let n = count as f64;
    let f = sum / n;
    let df = sum2 / n - f * f;
    let df = if df > 0.0 && count > 10 {
        (df / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    (f, df)
}

/// llama.cpp's covariance of two means (0 for fewer than 10 values).
fn covariance(suma: f64, sumb: f64, sumab: f64, count: usize) -> f64 {
    if count < 10 {
        return 0.0;
    }
    let n = count as f64;
    (sumab / n - (suma / n) * (sumb / n)) / (n - 1.0)
}

/// The quantiles of sorted values as llama.cpp computes them: 0 and 1 the extremes, 0.5 the
/// middle value (or the mean of the two), others interpolated at `fraction (n - 1)`; with
/// `llama`, in `f32` as llama.cpp's `float` code.
fn quantiles(sorted: &[f64], fractions: &[f64], llama: bool) -> Vec<(f64, f64)> {
    let n = sorted.len();
    let at = |fraction: f64| -> f64 {
        if n == 0 {
            return f64::NAN;
        }
        if fraction <= 0.0 {
            return sorted[0];
        }
        if fraction >= 1.0 {
            return sorted[n - 1];
        }
        if fraction == 0.5 {
            let (a, b) = (sorted[n / 2], sorted[(n - 1) / 2]);
            return if llama {
                (0.5_f32 * (a as f32 + b as f32)) as f64
            } else {
                0.5 * (a + b)
            };
        }
        if llama {
            let mut p = fraction as f32 * (n - 1) as f32;
            let ip = p as usize;
            p -= ip as f32;
            let (a, b) = (sorted[ip] as f32, sorted[(ip + 1).min(n - 1)] as f32);
            ((1.0 - p) * a + p * b) as f64
        } else {
            let mut p = fraction * (n - 1) as f64;
            let ip = p as usize;
            p -= ip as f64;
            (1.0 - p) * sorted[ip] + p * sorted[(ip + 1).min(n - 1)]
        }
    };
    fractions.iter().map(|&f| (f, at(f))).collect()
}

impl Summary {
    /// The summary of per-token values (see [`PerToken`]; `top` as its flags). With `llama`,
    /// llama.cpp's arithmetic: the per-token values as its `float`s, the squares of `float`s
    /// in `float`, the quantiles of the KL divergences rounded to `float`; else all in `f64`,
    /// and the top-5 and top-10 rates. Sums in token order.
    ///
    /// # Panics
    /// If the slices differ in length.
    ///
    /// # Example
    /// See [`Summary`].
    pub fn new(
        kld: &[f64],
        delta_p: &[f64],
        top: &[u8],
        nll: &[f64],
        nll_base: &[f64],
        llama: bool,
    ) -> Summary {
        let n = kld.len();
        assert!(
            [delta_p.len(), top.len(), nll.len(), nll_base.len()]
                .iter()
                .all(|&m| m == n),
            "the per-token values have one length"
        );
        // A product as llama.cpp's `float * float`, or in f64.
        let mul = |a: f64, b: f64| {
            if llama {
                (a as f32 * b as f32) as f64
            } else {
                a * b
            }
        };
        let mut s = [0.0_f64; 10];
        for i in 0..n {
            let (a, b, d) = (nll[i], nll_base[i], delta_p[i]);
            let d2 = mul(d, d);
            let add = [
                a,
                mul(a, a),
                b,
                mul(b, b),
                mul(a, b),
                kld[i],
                kld[i] * kld[i],
                d,
                d2,
                d2 * d2,
            ];
            for (x, v) in s.iter_mut().zip(add) {
                *x += v;
            }
        }
        let [s_nll, s_nll2, s_base, s_base2, s_cross, s_kld, s_kld2, s_dp, s_dp2, s_dp4] = s;
        let log_ppl = mean_and_uncertainty(s_nll, s_nll2, n);
        let log_base = mean_and_uncertainty(s_base, s_base2, n);
        let cov = covariance(s_nll, s_base, s_cross, n);
        let ppl = log_ppl.0.exp();
        let ppl_base = log_base.0.exp();
        let ratio = log_ppl.0 - log_base.0;
        let ratio_unc = (log_ppl.1 * log_ppl.1 + log_base.1 * log_base.1 - 2.0 * cov).sqrt();
        let (ppl_unc, base_unc) = (ppl * log_ppl.1, ppl_base * log_base.1);
        let ppl_cov = ppl * ppl_base * cov;
        let mse = mean_and_uncertainty(s_dp2, s_dp4, n);
        let rms = mse.0.sqrt();
        let rate = |bit: u8| {
            let p = top.iter().filter(|&&t| t & bit != 0).count() as f64 / n as f64;
            (p, (p * (1.0 - p) / (n as f64 - 1.0)).sqrt())
        };
        let sorted = |v: &[f64], round: bool| {
            let mut v: Vec<f64> = v
                .iter()
                .map(|&x| if round { x as f32 as f64 } else { x })
                .collect();
            v.sort_by(f64::total_cmp);
            v
        };
        Summary {
            count: n,
            ppl: (ppl, ppl_unc),
            ppl_base: (ppl_base, base_unc),
            cor: cov / (log_ppl.1 * log_base.1),
            log_ppl_ratio: (ratio, ratio_unc),
            ppl_ratio: (ratio.exp(), ratio.exp() * ratio_unc),
            ppl_diff: (
                ppl - ppl_base,
                (ppl_unc * ppl_unc + base_unc * base_unc - 2.0 * ppl_cov).sqrt(),
            ),
            kld: mean_and_uncertainty(s_kld, s_kld2, n),
            kld_quantiles: quantiles(&sorted(kld, llama), &KLD_FRACTIONS, llama),
            delta_p: mean_and_uncertainty(s_dp, s_dp2, n),
            delta_p_quantiles: quantiles(&sorted(delta_p, false), &DP_FRACTIONS, llama),
            delta_p_rms: (rms, 0.5 / rms * mse.1),
            same_top: rate(1),
            top5: (!llama).then(|| rate(2)),
            top10: (!llama).then(|| rate(4)),
        }
    }
}

/// The per-token outputs as ndarray views (for callers that hold arrays).
impl<'a> PerToken<'a> {
    /// [`PerToken::new`] over contiguous one-dimensional views.
    ///
    /// # Errors
    /// [`Error::Argument`] where a view is not contiguous.
    ///
    /// # Example
    /// ```
    /// use ndarray::Array1;
    /// let (mut a, mut b, mut c, mut d) = (Array1::zeros(2), Array1::zeros(2), Array1::zeros(2), Array1::zeros(2));
    /// let mut t = Array1::<u8>::zeros(2);
    /// let out = kldiv::PerToken::from_views(a.view_mut(), b.view_mut(), t.view_mut(), c.view_mut(), d.view_mut()).unwrap();
    /// assert_eq!(out.len(), 2);
    /// ```
    pub fn from_views(
        kld: ArrayViewMut1<'a, f64>,
        delta_p: ArrayViewMut1<'a, f64>,
        top: ArrayViewMut1<'a, u8>,
        nll: ArrayViewMut1<'a, f64>,
        nll_base: ArrayViewMut1<'a, f64>,
    ) -> Result<PerToken<'a>, Error> {
        let contiguous = || Error::Argument("the per-token outputs must be contiguous".into());
        Ok(PerToken::new(
            kld.into_slice().ok_or_else(contiguous)?,
            delta_p.into_slice().ok_or_else(contiguous)?,
            top.into_slice().ok_or_else(contiguous)?,
            nll.into_slice().ok_or_else(contiguous)?,
            nll_base.into_slice().ok_or_else(contiguous)?,
        ))
    }
}

#[cfg(all(test, target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::expf;

    /// [`expf`] gives the bits of glibc's `expf` (Rust's `f32::exp` here) on every input, NaN
    /// for NaN; glibc picks its FMA build on CPUs with FMA, the one `expf` copies.
    #[test]
    #[ignore = "2^32 inputs: run in release mode (make test-exhaustive)"]
    fn expf_is_glibcs_on_every_input() {
        if !is_x86_feature_detected!("fma") {
            return;
        }
        let differ = |bits: std::ops::Range<u64>| {
            bits.filter(|&b| {
                let x = f32::from_bits(b as u32);
                let (ours, libc) = (expf(x), x.exp());
                ours.to_bits() != libc.to_bits() && !(ours.is_nan() && libc.is_nan())
            })
            .count()
        };
        let differing: usize = std::thread::scope(|s| {
            let high = s.spawn(|| differ(1 << 31..1 << 32));
            differ(0..1 << 31) + high.join().expect("the thread ran")
        });
        assert_eq!(differing, 0);
    }
}
