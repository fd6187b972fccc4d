"""The polynomial of kldiv's float32 softmax ``exp`` (src/math.rs, ``exp_f32_unit``).

``e^r`` for ``|r| <= ln(2)/2`` as a polynomial of degree 6 that minimises the largest relative
error (Lawson's iteration of weighted least squares on a dense grid), rounded to float32: a
relative error of 2^-29 before rounding, where the Taylor polynomial of degree 7 that
``exp_f32`` uses has 2^-27, so one multiply-add fewer an element. Over every float32 in [-87,
0] the softmax's ``exp`` is then within 1.06 ulp of the exact value (0.94 with the Taylor
polynomial). Run: ``python scripts/fit_exp_f32.py``; the exhaustive test (``make
test-exhaustive``) checks the result.
"""

import numpy as np

DEGREE = 6
half = np.log(2) / 2
r = np.linspace(-half, half, 200001)
f = np.exp(r)
basis = np.vander(r, DEGREE + 1)  # r^6 ... r^0
w = np.ones_like(r)
for _ in range(200):
    root = np.sqrt(w) / f  # weights of the relative error
    coef, *_ = np.linalg.lstsq(basis * root[:, None], f * root, rcond=None)
    err = np.abs(basis @ coef - f) / f
    w = w * err
    w /= w.sum()
print(f"relative error before rounding: 2^{np.log2(err.max()):.1f}")
for power, c in zip(range(DEGREE, -1, -1), coef):
    c32 = np.float32(c)
    print(f"r^{power}: {float(c32):.10e}  (bits 0x{int(c32.view(np.uint32)):08x})")
