"""Label-free calibration of a match score: P(clean | score) and the keep cut.

The noise model is measured, not assumed: a mismatched pair is an image and
a text of two different rows, so the scores of seeded shuffled pairs
(x_i, y_j) are a sample of the noise distribution f_n. The data's scores
follow ``f = pi * f_n + (1 - pi) * f_c``. Three fits of that mixture:

- ``null-iso`` (default): no shape assumed for either component. The
  density ratio ``rho(s) = f(s) / f_n(s)`` is fitted by isotonic regression
  of "real pair (1) vs shuffled pair (0)" on the score, with the two samples
  weighted equally (a monotone likelihood ratio is what any useful score
  has). The noise share is read where clean pairs are rare: ``pi`` =
  F(t) / F_n(t) at t = the null median (F, F_n the CDFs; this overstates pi
  by (1 - pi) F_c(t) / F_n(t), the share of clean pairs scoring like a
  median mismatch). Then ``P(clean | s) = 1 - pi / rho(s)``.
- ``null-em``: f_n a kernel density of the shuffled scores, f_c a Gaussian;
  EM fits pi and the Gaussian.
- ``gmm``: a two-component Gaussian mixture on the score alone (the usual
  DivideMix-style fit; no noise model), for comparison.

Keep rules (a pair is kept when ...):

- ``balanced`` (default): its score is more typical of clean pairs than of
  noise, f_c(s) > f_n(s). This is the cut that maximises clean kept % +
  noise caught % (where the two densities cross), the quantity the label
  chosen "best cut" maximises; it does not depend on pi. For the mixtures
  it is ``P(clean | s) > 1 - pi``.
- ``posterior``: P(clean | s) > 0.5, the fewest wrong decisions; with little
  noise it keeps more, with much noise it keeps less.
- ``null-alpha``: a test of "this is a random pair" at level alpha: kept when
  the score exceeds the (1 - alpha) quantile of the shuffled-pair scores, so
  about alpha of the mismatched pairs survive whatever the noise share;
  the clean share kept is whatever the score's separation allows.
- ``caught`` (default): the ``balanced`` cut, raised where needed so that
  the *estimated* share of noisy pairs caught reaches ``noise_caught``
  (default 0.975): maximise clean kept + noise caught subject to catching
  that share. The estimate comes from the calibrated probabilities on the
  fit sample: caught(t) = sum over real scores <= t of P(noisy | s),
  divided by the sum over all of them (kept(t) likewise from P(clean | s)).
  The price is capped: the cut rises no further than where the estimated
  kept + caught falls ``max_cost`` (default 0.01, the issue's one point)
  below its best, so on a score that separates poorly the rule stays near
  ``balanced`` instead of dropping most clean pairs to reach the target.

Everything fitted is a JSON-able dict; :func:`clean_prob` replays it.
"""

from __future__ import annotations

import numpy as np

CALIBRATIONS = ("null-iso", "null-em", "gmm")
KEEP_RULES = ("balanced", "posterior", "null-alpha", "caught")
# isotonic knots kept in the params (thinned evenly beyond this)
_MAX_KNOTS = 512
_EM_ITERS = 200
_GRID = 512


def _norm_pdf(s: np.ndarray, mean: float, sd: float) -> np.ndarray:
    return np.exp(-0.5 * ((s - mean) / sd) ** 2) / (sd * np.sqrt(2 * np.pi))


def noise_share(real: np.ndarray, null: np.ndarray, quantile: float = 0.5) -> float:
    """pi = F(t) / F_n(t) at t = the ``quantile`` of the null scores, in (0, 1]."""
    t = float(np.quantile(null, quantile))
    ratio = float(np.mean(real <= t)) / max(float(np.mean(null <= t)), 1e-12)
    return float(np.clip(ratio, 1e-4, 1.0))


def fit_null_iso(real: np.ndarray, null: np.ndarray, quantile: float = 0.5) -> dict:
    """Isotonic density ratio real/null and the noise share; see module doc."""
    x = np.r_[real, null]
    y = np.r_[np.ones(len(real)), np.zeros(len(null))]
    w = np.r_[np.full(len(real), 1.0 / len(real)), np.full(len(null), 1.0 / len(null))]
    from sklearn.isotonic import IsotonicRegression  # ~1 s to import: only when fitting

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(x, y, sample_weight=w)
    knots_x, knots_g = iso.X_thresholds_, iso.y_thresholds_
    if len(knots_x) > _MAX_KNOTS:
        keep = np.unique(np.linspace(0, len(knots_x) - 1, _MAX_KNOTS).round().astype(int))
        knots_x, knots_g = knots_x[keep], knots_g[keep]
    pi = noise_share(real, null, quantile)
    return {
        "kind": "null-iso",
        "pi": pi,
        "quantile": quantile,
        "knots": [float(v) for v in knots_x],
        "balance": [float(v) for v in knots_g],  # f / (f + f_n) at each knot
    }


def _kde_on_grid(null: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian kernel density of the null scores on a regular grid (Silverman)."""
    grid = np.linspace(lo, hi, _GRID)
    sd = float(np.std(null))
    iqr = float(np.subtract(*np.quantile(null, [0.75, 0.25])))
    bw = 0.9 * min(sd, iqr / 1.34 if iqr > 0 else sd) * len(null) ** -0.2
    bw = max(bw, 1e-6)
    # binned KDE: histogram on the grid, then convolve with the kernel
    step = grid[1] - grid[0]
    counts = np.histogram(null, bins=_GRID, range=(lo - step / 2, hi + step / 2))[0]
    half = int(np.ceil(4 * bw / step))
    kern = _norm_pdf(np.arange(-half, half + 1) * step, 0.0, bw) * step
    dens = np.convolve(counts, kern, mode="same") / (len(null) * step)
    return grid, np.maximum(dens, 1e-12)


def fit_null_em(real: np.ndarray, null: np.ndarray) -> dict:
    """EM for pi and a Gaussian clean component, the noise density held fixed."""
    lo = float(min(real.min(), null.min()))
    hi = float(max(real.max(), null.max()))
    grid, dens = _kde_on_grid(null, lo, hi)
    fn = np.interp(real, grid, dens)
    pi = noise_share(real, null)
    top = real[real > np.quantile(null, 0.99)]
    top = top if len(top) > 1 else real
    mean, sd = float(top.mean()), float(max(top.std(), 1e-3))
    for _ in range(_EM_ITERS):
        fc = _norm_pdf(real, mean, sd)
        r = (1 - pi) * fc / np.maximum((1 - pi) * fc + pi * fn, 1e-300)
        new_pi = float(np.clip(1.0 - r.mean(), 1e-4, 1 - 1e-4))
        mean = float(np.sum(r * real) / max(r.sum(), 1e-12))
        sd = float(np.sqrt(np.sum(r * (real - mean) ** 2) / max(r.sum(), 1e-12)))
        sd = max(sd, 1e-4)
        if abs(new_pi - pi) < 1e-7:
            pi = new_pi
            break
        pi = new_pi
    return {
        "kind": "null-em",
        "pi": pi,
        "clean_mean": mean,
        "clean_sd": sd,
        "grid": [float(v) for v in grid[[0, -1]]],
        "noise_density": [float(v) for v in dens],
    }


def fit_gmm(real: np.ndarray) -> dict:
    """Two Gaussians on the score by EM (no noise model); clean = higher mean."""
    lo, hi = np.quantile(real, [0.25, 0.75])
    means = np.array([lo, hi], dtype=np.float64)
    sds = np.full(2, max(float(real.std()) / 2, 1e-3))
    w = np.array([0.5, 0.5])
    for _ in range(_EM_ITERS):
        dens = np.stack([w[c] * _norm_pdf(real, means[c], sds[c]) for c in range(2)])
        resp = dens / np.maximum(dens.sum(axis=0), 1e-300)
        nk = np.maximum(resp.sum(axis=1), 1e-12)
        new_means = (resp @ real) / nk
        sds = np.sqrt(np.maximum((resp * (real - new_means[:, None]) ** 2).sum(axis=1) / nk, 1e-8))
        w = nk / nk.sum()
        done = np.allclose(new_means, means, atol=1e-9)
        means = new_means
        if done:
            break
    hi_c = int(np.argmax(means))
    return {
        "kind": "gmm",
        "pi": float(w[1 - hi_c]),
        "clean_mean": float(means[hi_c]),
        "clean_sd": float(sds[hi_c]),
        "noise_mean": float(means[1 - hi_c]),
        "noise_sd": float(sds[1 - hi_c]),
    }


def caught_cut(params: dict, real: np.ndarray, target: float, max_cost: float = 0.01) -> float:
    """Lowest score t whose estimated share of noisy pairs at or below it
    reaches ``target``, but no higher than where the estimated clean kept +
    noise caught falls ``max_cost`` below its best (both estimated from
    P(clean | s) over the real fit scores)."""
    if target <= 0 or len(real) == 0:
        return -np.inf
    order = np.sort(real)
    clean = clean_prob(params, order)
    noisy = 1.0 - clean
    if noisy.sum() <= 0 or clean.sum() <= 0:
        return -np.inf
    caught = np.cumsum(noisy) / noisy.sum()  # dropping order[: i + 1]
    kept = 1.0 - np.cumsum(clean) / clean.sum()
    total = kept + caught
    best = int(np.argmax(total))
    at = min(int(np.searchsorted(caught, target)), len(order) - 1)
    if at > best:
        within = np.flatnonzero(total[best : at + 1] >= total[best] - max_cost)
        at = best + int(within[-1])
    return float(order[at])


def fit_calibration(
    kind: str,
    real: np.ndarray,
    null: np.ndarray,
    alpha: float,
    noise_caught: float = 0.975,
    max_cost: float = 0.01,
) -> dict:
    """Fit ``kind`` on real and shuffled-pair scores; add the null's alpha cut
    and the cut that catches ``noise_caught`` of the noise (estimated)."""
    real = np.asarray(real, dtype=np.float64)
    null = np.asarray(null, dtype=np.float64)
    if kind == "null-iso":
        params = fit_null_iso(real, null)
    elif kind == "null-em":
        params = fit_null_em(real, null)
    elif kind == "gmm":
        params = fit_gmm(real)
    else:
        raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {kind!r}")
    params["alpha"] = float(alpha)
    params["null_cut"] = float(np.quantile(null, 1.0 - alpha))
    params["noise_caught"] = float(noise_caught)
    params["max_cost"] = float(max_cost)
    params["caught_cut"] = caught_cut(params, real, noise_caught, max_cost)
    return params


def _gmm_posterior(params: dict, s: np.ndarray) -> np.ndarray:
    fc = (1 - params["pi"]) * _norm_pdf(s, params["clean_mean"], params["clean_sd"])
    fn = params["pi"] * _norm_pdf(s, params["noise_mean"], params["noise_sd"])
    return fc / np.maximum(fc + fn, 1e-300)


def clean_prob(params: dict, s: np.ndarray) -> np.ndarray:
    """P(clean | score) from fitted params (float64, in [0, 1])."""
    s = np.asarray(s, dtype=np.float64)
    pi = params["pi"]
    kind = params["kind"]
    if kind == "null-iso":
        g = np.interp(s, params["knots"], params["balance"])
        # rho = f / f_n = g / (1 - g); P(clean) = 1 - pi / rho
        with np.errstate(divide="ignore"):
            p = 1.0 - pi * (1.0 - g) / g
        return np.clip(np.nan_to_num(p, nan=0.0, neginf=0.0), 0.0, 1.0)
    if kind == "null-em":
        lo, hi = params["grid"]
        fn = np.interp(
            s, np.linspace(lo, hi, len(params["noise_density"])), params["noise_density"]
        )
        fc = _norm_pdf(s, params["clean_mean"], params["clean_sd"])
        num = (1 - pi) * fc
        return np.clip(num / np.maximum(num + pi * fn, 1e-300), 0.0, 1.0)
    if kind == "gmm":
        p = _gmm_posterior(params, s)
        # far right the wider Gaussian can win again; P must not fall with the score
        at_mean = _gmm_posterior(params, np.array([params["clean_mean"]]))[0]
        return np.where(s >= params["clean_mean"], np.maximum(p, at_mean), p)
    raise ValueError(f"unknown calibration kind {kind!r}")


def keep_mask(params: dict, score: np.ndarray, prob: np.ndarray, rule: str) -> np.ndarray:
    """Keep decision from the score and P(clean | s); see the module doc."""
    if rule == "null-alpha":
        return np.asarray(score) > params["null_cut"]
    if rule == "posterior":
        return prob > 0.5
    if rule == "balanced":
        return prob > 1.0 - params["pi"]
    if rule == "caught":
        # older fits carry no caught_cut: the rule is then balanced
        return (prob > 1.0 - params["pi"]) & (np.asarray(score) > params.get("caught_cut", -np.inf))
    raise ValueError(f"keep rule must be one of {KEEP_RULES}, got {rule!r}")
