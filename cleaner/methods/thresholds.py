"""Estimator-agnostic thresholds (``--thresholds auto``): the raw cosine,
calibrated without labels, sets the seed methods' constants.

The published constants are CLIP's: SDD drops a pair at ``100 * cosine <=
20`` and draws its clean set D_c above 30, and OSA's boundary beta is a
cosine. On another estimator (cosines bunched near 1, or spread around 0)
the same numbers land anywhere. ``auto`` reads them off the data's own
cosine distribution, the way the ``match`` method calibrates its score:

1. A seeded sample of up to ``AUTO_ROWS`` scorable rows. Their own cosines
   are the data ("real"); the cosines of shuffled pairs (each sampled image
   with the caption of another sampled row, ``NULL_ROUNDS`` rounds) are a
   measured sample of the noise distribution f_n.
2. :func:`cleaner.methods.match.calibrate.fit_null_iso` fits the density
   ratio of real to shuffled cosines by isotonic regression (no shape
   assumed for either component), the noise share pi, and
   ``P(clean | cosine) = 1 - pi / rho(cosine)``.
3. The *balanced cut*: where clean and noise densities cross (f_c = f_n;
   the ``balanced`` keep rule of ``match``, which maximises clean kept % +
   noise caught %).
4. The *keep cut* (``cut``): the balanced cut raised, where needed, until
   the estimated share of the noise caught reaches ``NOISE_CAUGHT`` (98%)
   plus ``CAUGHT_Z`` (1) binomial standard error of a share over the pi * n
   noisy rows of the sample -- ``match``'s ``caught`` rule
   (:func:`cleaner.methods.match.calibrate.caught_cut`: the estimate is the
   calibrated P(noisy | cosine) summed over the sample), with its price
   capped the same way: the cut rises no further than where the estimated
   clean kept + noise caught falls ``MAX_COST`` (1 point) below its best.
   Why not the balanced cut: it maximises kept + caught, and with a noise
   distribution whose right tail reaches into the clean one (a mismatched
   caption that happens to fit) that optimum catches only ~97% of the
   noise; a keep rule for cleaning should catch the noise first and pay
   for it in clean pairs, but only a bounded amount. Why the margin: the
   estimate is not biased (measured on the shapes benchmark: at a fixed
   cut it was within 0.1-0.3 points of the true share at 50% noise and
   *under*stated it at 20% and 80%), but a realised share over M noisy
   rows scatters by sqrt(c (1 - c) / M) around it (0.36 points at M =
   1,500), so aiming at exactly 98% misses half the time; one standard
   error above it is met about 5 times in 6. On large samples the margin
   vanishes (0.1 points at 32,768 rows and pi = 0.5).
5. The *clean cut*: the lowest cosine whose clean posterior exceeds
   ``CLEAN_SET_PROB`` (0.99), never below the keep cut.

The balanced and clean cuts are exact crossings of the fitted
piecewise-linear balance curve ``g = f / (f + f_n)`` (at g = 1/2 and g =
pi / (pi + 1 - 0.99)). Mapping: OSA's beta = cut, SDD's alpha = 100 * cut,
SDD's beta_c = 100 * clean cut (D_c stricter than the kept set, as 30 > 20
on CLIP); SPS drops the same share of rows as the cut (``drop_share``, the
sampled rows at or below it), ranked by its own clean probability
(:mod:`cleaner.methods.sps.method`). Nothing here reads labels. The cut's
standard error comes from ``BOOTSTRAP`` resamples, each a weighted PAV fit
over the pooled cosines sorted once.

The same sample also checks OSA's cubic (:func:`osa_assumptions`): with
d = cosine - beta, d^2 (1 - d) rises only up to d = 2/3, so rows past it are
weighted *less* the better they match.
"""

from __future__ import annotations

import weakref

import numpy as np

from cleaner.methods.base import pair_cosines

MODES = ("paper", "auto")
AUTO_ROWS = 1 << 15  # rows sampled for the calibration
NULL_ROUNDS = 4  # shuffled pairs per sampled row
CLEAN_SET_PROB = 0.99  # clean posterior that defines SDD's D_c in auto mode
NOISE_CAUGHT = 0.98  # noise share the keep cut aims to catch (issue 15's target)
CAUGHT_Z = 1.0  # ... plus this many standard errors of the realised share
MAX_COST = 0.01  # the most estimated clean kept + noise caught the cut may give up
BOOTSTRAP = 8  # resamples for the standard error of the cut
OSA_PEAK_D = 2.0 / 3.0
_SALT = 0x7A0C  # keeps this sample apart from the other seeded draws of a job
# OSA and SDD of one job fit on the same calibration: computed once per job
# data (the owner of ctx.gather_rows, held weakly) and seed
_MEMO: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def mode_of(settings) -> str:
    """The job's thresholds mode (``paper`` for settings from before the option)."""
    return getattr(settings, "thresholds", "paper") or "paper"


def check_settings(settings, beta_source_explicit: bool = False) -> str | None:
    """An error message for a thresholds mode that conflicts with the other
    settings, or None. ``auto`` sets OSA's beta itself, so the beta options
    would be silently ignored."""
    mode = mode_of(settings)
    if mode not in MODES:
        return f"--thresholds must be paper or auto, not {mode!r}"
    if mode != "auto":
        return None
    given = [
        flag
        for flag, on in (
            ("--beta", settings.beta is not None),
            ("--beta-samples", settings.beta_samples is not None),
            ("--beta-source", beta_source_explicit),
        )
        if on
    ]
    if given:
        return (
            f"{', '.join(given)} set{'s' if len(given) == 1 else ''} OSA's paper boundary; "
            "--thresholds auto maps beta from the data: give one of them"
        )
    return None


def sample_cosines(ctx, rows: int = AUTO_ROWS, rounds: int = NULL_ROUNDS):
    """(real, null) cosines of a seeded sample of the job's scorable rows,
    or (None, None) with fewer than two rows. ``real``: each row's own pair;
    ``null``: image of row order[t] with the caption of row order[t + r]."""
    total = int(sum(ctx.ok_counts))
    if total < 2 or ctx.gather_rows is None:
        return None, None
    rng = np.random.default_rng([int(ctx.seed), _SALT])
    picked = np.sort(rng.choice(total, size=min(total, rows), replace=False))
    # float32 rows, products summed in float64 (the same values as float64
    # copies, without 4 x 134 MB of them at 32k rows)
    order = rng.permutation(len(picked))
    # read in the permuted order (the rounds are views of it, no copies);
    # ``real`` is returned in the order of ``picked``
    image = ctx.gather_rows(picked[order], "image")
    text = ctx.gather_rows(picked[order], "text")
    real = np.empty(len(picked), dtype=np.float64)
    real[order] = pair_cosines(image, text)
    null = [pair_cosines(image, text, r) for r in range(1, min(rounds, len(picked) - 1) + 1)]
    return real, np.concatenate(null)


def _crossing(knots: list, balance: list, level: float) -> float | None:
    """Lowest cosine where the interpolated balance exceeds ``level`` (the
    balance is non-decreasing); -1 when it does everywhere, None when never."""
    x, g = np.asarray(knots, np.float64), np.asarray(balance, np.float64)
    above = np.flatnonzero(g > level)
    if not len(above):
        return None
    k = int(above[0])
    if k == 0:  # np.interp holds the first value below the first knot
        return -1.0
    x0, x1, g0, g1 = x[k - 1], x[k], g[k - 1], g[k]
    return float(x0 + (level - g0) / (g1 - g0) * (x1 - x0))


def caught_target(pi: float, n: int) -> float:
    """The estimated noise-caught share the cut must reach: ``NOISE_CAUGHT``
    plus ``CAUGHT_Z`` binomial standard errors of a share over the pi * n
    noisy rows the estimate rests on (the realised share of that many noisy
    rows scatters around the fitted one by about that much)."""
    m = max(float(pi) * int(n), 1.0)
    se = float(np.sqrt(NOISE_CAUGHT * (1.0 - NOISE_CAUGHT) / m))
    return float(min(NOISE_CAUGHT + CAUGHT_Z * se, 0.999))


def _cuts_of_fit(fit: dict, real: np.ndarray) -> dict:
    """Balanced cut, keep cut (raised by the caught rule) and clean cut of a
    null-iso fit; ``real``: the fit's real cosines."""
    from cleaner.methods.match.calibrate import caught_cut

    pi = float(fit["pi"])
    balanced = _crossing(fit["knots"], fit["balance"], 0.5)
    target = caught_target(pi, len(real))
    if balanced is None:  # nothing is more typical of clean pairs
        cut = 1.0
    else:
        cut = max(balanced, caught_cut(fit, real, target, MAX_COST))
    level = pi / (pi + 1.0 - CLEAN_SET_PROB)
    clean = _crossing(fit["knots"], fit["balance"], level)
    reached = clean is not None
    if clean is None:  # the posterior never gets there: the rows where it is highest
        top = int(np.argmax(fit["balance"]))
        clean = float(fit["knots"][top])
    return {
        "pi": pi,
        "cut": float(cut),
        "balanced_cut": 1.0 if balanced is None else float(balanced),
        "noise_caught_target": target,
        "max_cost": MAX_COST,
        "drop_share": float(np.mean(real <= cut)),
        "clean_cut": float(max(cut, clean)),
        "clean_prob_reached": reached,
        "separates": balanced is not None,
    }


def _cuts(real: np.ndarray, null: np.ndarray) -> dict:
    from cleaner.methods.match.calibrate import fit_null_iso

    return _cuts_of_fit(fit_null_iso(real, null), real)


def _bootstrap_cuts(real: np.ndarray, null: np.ndarray, rng, rounds: int) -> list[float]:
    """The keep cut on ``rounds`` resamples of rows and shuffled pairs. The
    pooled cosines are sorted once; a resample is multinomial weights on
    them, and its isotonic fit a weighted PAV over the sorted values
    (the fit ``fit_null_iso`` makes, without re-sorting or thinning)."""
    from sklearn.isotonic import isotonic_regression

    from cleaner.methods.match.calibrate import noise_share

    x = np.r_[real, null]
    order = np.argsort(x, kind="stable")
    xs, is_real = x[order], order < len(real)
    real_sorted = xs[is_real]
    out = []
    for _ in range(rounds):
        counts = np.empty(len(x), dtype=np.int64)  # multinomial: draws with replacement
        counts[is_real] = np.bincount(rng.integers(0, len(real), len(real)), minlength=len(real))
        counts[~is_real] = np.bincount(rng.integers(0, len(null), len(null)), minlength=len(null))
        on = counts > 0
        w = np.where(is_real, counts / len(real), counts / len(null))[on]
        g = isotonic_regression(
            is_real[on].astype(np.float64), sample_weight=w, y_min=0.0, y_max=1.0
        )
        xon = xs[on]
        at = np.flatnonzero(np.r_[True, xon[1:] > xon[:-1]])  # equal cosines: one knot
        knots = xon[at]
        resampled = np.repeat(real_sorted, counts[is_real])
        null_rs = np.repeat(xs[~is_real], counts[~is_real])
        fit = {"kind": "null-iso", "pi": noise_share(resampled, null_rs),
               "knots": knots, "balance": g[at]}  # fmt: skip
        out.append(_cuts_of_fit(fit, resampled)["cut"])
    return out


def calibrate_cosine(real: np.ndarray, null: np.ndarray, seed: int = 0) -> dict:
    """The JSON-able calibration of the raw cosine: noise share, cut, clean
    cut, and the cut's bootstrap standard error (rows and shuffled pairs
    resampled ``BOOTSTRAP`` times)."""
    real = np.asarray(real, np.float64)
    null = np.asarray(null, np.float64)
    out = _cuts(real, null)
    rng = np.random.default_rng([int(seed), _SALT, 1])
    boot = _bootstrap_cuts(real, null, rng, BOOTSTRAP)
    return {
        "kind": "null-iso on the raw cosine (real vs shuffled pairs)",
        **out,
        "cut_se": float(np.std(boot, ddof=1)) if len(boot) > 1 else 0.0,
        "clean_set_prob": CLEAN_SET_PROB,
        "n_real": int(len(real)),
        "n_null": int(len(null)),
        "real_mean": float(real.mean()),
        "null_mean": float(null.mean()),
    }


def fit_cosine_calibration(ctx) -> tuple[dict | None, np.ndarray | None]:
    """(calibration, sampled real cosines) for the job behind ``ctx``; the
    calibration is None with fewer than three scorable rows."""
    owner = getattr(ctx.gather_rows, "__self__", ctx.gather_rows)
    key = (int(ctx.seed), tuple(int(n) for n in ctx.ok_counts))
    try:
        memo = _MEMO.setdefault(owner, {})
    except TypeError:  # not weakly referable (None): no reuse
        memo = {}
    if key not in memo:
        real, null = sample_cosines(ctx)
        cal = None if real is None or len(real) < 3 else calibrate_cosine(real, null, ctx.seed)
        memo[key] = (cal, real)
    cal, real = memo[key]
    return (dict(cal) if cal else None), real


def require(cal: dict | None, method: str) -> dict:
    if cal is None:
        raise ValueError(f"--thresholds auto ({method}) needs at least 3 scorable samples")
    return cal


def osa_assumptions(cosines: np.ndarray | None, beta: float, form: str) -> dict:
    """Whether OSA's cubic behaves on this data: beta >= 0 and no row past
    the peak d = 2/3 (shares estimated on the calibration sample)."""
    out: dict = {"beta_negative": bool(beta < 0), "form": form}
    if cosines is not None and len(cosines):
        d = np.asarray(cosines, np.float64) - beta
        out.update(
            rows=int(len(d)),
            share_past_peak=float(np.mean(d > OSA_PEAK_D)),
            share_past_one=float(np.mean(d > 1.0)),
        )
    past = out.get("share_past_peak", 0.0)
    out["holds"] = bool(not out["beta_negative"] and past == 0.0)
    state = f"beta {'< 0' if beta < 0 else '>= 0'}, {100 * past:.1f}% of sampled rows have d > 2/3"
    if "rows" not in out:
        out["note"] = f"beta {'< 0' if beta < 0 else '>= 0'}; too few rows to check d"
    elif out["holds"]:
        out["note"] = (
            "beta >= 0 and every sampled row has d <= 2/3: the cubic rises with the cosine"
        )
    elif form == "monotone":
        out["note"] = (
            f"{state}; the monotone form holds the weight at the peak 4/27 past d = 2/3, "
            "so it never falls as the cosine rises"
        )
    else:
        out["note"] = (
            f"{state}, where the cubic falls as the cosine rises (clean pairs weigh less than "
            "noisier ones; 0 past d = 1); --thresholds auto keeps the weight monotone"
        )
    return out
