"""The polynomial of kldiv's float32 ``ln`` (src/math.rs, ``ln_f32_scaled``).

``ln(1+f) = f - s*(f - R)`` with ``s = f/(2+f)`` holds exactly for
``R = (2*atanh(s) - 2*s)/s = z*(2/3 + 2z/5 + 2z^2/7 + ...)``, ``z = s^2``, and the reduction keeps
``1+f`` in ``[sqrt(2)/2, sqrt(2))``, so ``z <= (sqrt(2)-1)^2/(sqrt(2)+1)^2``. This fits
``R/z`` with three coefficients (least squares on a dense grid), rounded to float32: over all
float32 inputs, ``ln`` is then at most 0.90 ulp from the exact value (musl's four coefficients:
0.91 in the same formula). Run: ``python
scripts/fit_ln_f32.py``; the exhaustive test (``make test-exhaustive``) checks the result.
"""

import numpy as np

top = ((np.sqrt(2) - 1) / (np.sqrt(2) + 1)) ** 2
z = np.linspace(0.0, top, 20001)
series = sum(2 * z**k / (2 * k + 3) for k in range(30))  # R/z, to double precision
basis = np.vstack([z**0, z, z**2]).T
coef, *_ = np.linalg.lstsq(basis, series, rcond=None)
for i, c in enumerate(coef, start=1):
    c32 = np.float32(c)
    print(f"LG{i} = {float(c32):.10e}  (bits 0x{int(c32.view(np.uint32)):08x})")
