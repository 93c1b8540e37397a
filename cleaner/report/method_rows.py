"""Each method's key numbers as (name, value) rows: OSA, SDD, SPS, CLIPCleaner, match.

A module of its own because each method reads its own fitted parameters
(thresholds, GMMs, settings) from the sidecar's metadata; the text and HTML
renderers only ask :func:`rows_of` and :func:`title_of`. Kept / dropped
counts are by each method's own keep rule (:func:`cleaner.report.data.keep_rules`),
and a method registered without rows of its own here still gets those.
"""

from __future__ import annotations

import math

import numpy as np

from cleaner.report.data import OSA_PEAK, PARTITIONS, ReportData, rule_text
from cleaner.report.tables import fmt_count, fmt_pct


def _share(part: int, whole: int) -> str:
    """'count  share of ok', padded so that a column of them lines up in text."""
    return f"{fmt_count(part):>{len(fmt_count(whole))}}  {fmt_pct(part, whole):>6} of ok"


def _decimals(x, digits: int = 4) -> str:
    """A number with ``digits`` decimals; "-" when missing or not finite."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{digits}f}"


def _quantiles(x: np.ndarray) -> str:
    x = x[np.isfinite(x)]
    if not len(x):
        return "-"
    q = np.quantile(x, [0.05, 0.5, 0.95])
    return f"{q[0]:.4f} / {q[1]:.4f} / {q[2]:.4f}"


def _gmm_text(gmm: dict | None, unit: str, scale: float = 1.0) -> list[tuple[str, str]]:
    """One line per component, lowest mean first: weight, mean, sd (divided by ``scale``)."""
    if not gmm or not gmm.get("means"):
        return []
    order = np.argsort(gmm["means"])
    rows = []
    for rank, k in enumerate(order):
        mean = gmm["means"][k] / scale
        sd = math.sqrt(gmm["variances"][k]) / scale
        rows.append(
            (
                f"GMM component {rank + 1} ({unit})",
                f"weight {gmm['weights'][k]:.3f}, mean {mean:.4f}, sd {sd:.4f}",
            )
        )
    return rows


def _kept_rows(d: ReportData, method: str) -> list[tuple[str, str]]:
    """Kept / dropped by the method's own keep rule (none without a rule)."""
    if method not in d.rules:
        return []
    kept, ok = d.total(f"{method}_kept"), d.ok_rows
    return [(f"kept ({rule_text(d.rules[method])})", _share(kept, ok)), ("dropped", _share(ok - kept, ok))]


def _thresholds_rows(p: dict) -> list[tuple[str, str]]:
    """How a seed method's constants were set (--thresholds) and the noise
    share of the cosine's label-free calibration."""
    t = p.get("thresholds") or {}
    rows = [("thresholds", t.get("mode", "paper"))]
    rows += [(f"{k} (auto)", t[k]) for k in ("beta", "alpha", "beta_c") if k in t]
    cal = p.get("calibration") or t.get("calibration") or {}
    if cal.get("pi") is not None:
        rows.append(
            ("estimated noise rate", f"{100 * cal['pi']:.1f}% (raw cosine vs shuffled pairs)")
        )
    return rows


def osa_rows(d: ReportData) -> list[tuple[str, str]]:
    p = d.params("osa")
    rows = _kept_rows(d, "osa") + [
        ("mean osa_weight", f"{_decimals(d.mean('osa_weight'))} (peak {OSA_PEAK:.4f})"),
        ("mean cosine", _decimals(d.mean("cosine"))),
        ("cosine p5 / p50 / p95", _quantiles(d.sample.get("cosine", np.zeros(0)))),
        ("weight form", p.get("form", "paper")),
    ]
    beta = (p.get("beta") or {}).get("value")
    cos = d.sample.get("cosine", np.zeros(0))
    if beta is not None and len(cos):  # past the cubic's peak: the weight falls as cosine rises
        rows.append(
            (
                "rows with d > 2/3 (past the peak)",
                fmt_pct(int(np.sum(cos - beta > 2 / 3)), len(cos)),
            )
        )
    if (p.get("assumptions") or {}).get("note"):
        rows.append(
            (
                "cubic's assumptions",
                ("hold: " if p["assumptions"]["holds"] else "broken: ") + p["assumptions"]["note"],
            )
        )
    return rows + _thresholds_rows(p)


def sdd_rows(d: ReportData) -> list[tuple[str, str]]:
    p, ok = d.params("sdd"), d.ok_rows
    scale = float(p.get("scale") or 100.0)
    clean = d.total("sdd_clean")
    rows = []
    if p.get("alpha") is not None:
        rows.append(("alpha (self-drop)", f"{p['alpha']:g} = cosine {p['alpha'] / scale:.3f}"))
    if p.get("beta_c") is not None:
        rows.append(("beta_c (clean set)", f"{p['beta_c']:g} = cosine {p['beta_c'] / scale:.3f}"))
    rows += _kept_rows(d, "sdd") + [
        ("clean set (sdd_clean)", _share(clean, ok)),
        ("mean sdd_w_con", _decimals(d.mean("sdd_w_con"))),
    ]
    if p.get("fit_rows") is not None:
        rows.append(
            (
                "GMM fit rows",
                f"{fmt_count(p['fit_rows'])} of {fmt_count(p.get('fit_rows_total') or p['fit_rows'])}",
            )
        )
    rows += _thresholds_rows(p)
    return rows + _gmm_text(p.get("gmm"), "cosine", scale)  # shown in cosine units


def sps_rows(d: ReportData) -> list[tuple[str, str]]:
    p, ok = d.params("sps"), d.ok_rows
    rows = _kept_rows(d, "sps") + [(part, _share(d.total(f"sps_{part}"), ok)) for part in PARTITIONS]
    rows.append(("eps1 / eps2", f"{p.get('eps1', '?')} / {p.get('eps2', '?')}"))
    rows.append(("mean sps_loss", _decimals(d.mean("sps_loss"))))
    if p.get("loss_min") is not None:
        rows.append(
            ("GMM loss range", f"{p['loss_min']:.4f} .. {p['loss_max']:.4f} (min-max normalised)")
        )
    if p.get("fit_rows") is not None:
        rows.append(
            (
                "GMM fit rows",
                f"{fmt_count(p['fit_rows'])} of {fmt_count(p.get('fit_rows_total') or p['fit_rows'])}",
            )
        )
    rows += [
        (k, str(p[k]))
        for k in ("proxy_label", "batch_size", "forced_noisy_threshold")
        if p.get(k) is not None
    ]
    return rows + _gmm_text(p.get("gmm"), "normalised loss")  # on the normalised loss


def clipcleaner_rows(d: ReportData) -> list[tuple[str, str]]:
    p = d.params("clipcleaner")
    rows = _kept_rows(d, "clipcleaner") + [
        ("mean cc_label_quality", _decimals(d.mean("cc_label_quality"))),
        ("classes", str(len(p.get("classes") or []) or len(d.class_rows))),
    ]
    settings = p.get("settings") or {}
    for k in ("combine", "estimators", "selectors", "induced", "theta_cons", "theta_gmm"):
        if k in settings:
            v = settings[k]
            rows.append((k, ", ".join(map(str, v)) if isinstance(v, list) else str(v)))
    if p.get("n_fit") is not None:
        rows.append(("fit rows", fmt_count(p["n_fit"])))
    return rows


def match_rows(d: ReportData) -> list[tuple[str, str]]:
    p = d.params("match")
    fit, settings = p.get("fit") or {}, p.get("settings") or {}
    rows = _kept_rows(d, "match")
    rows += [(k, str(settings[k])) for k in ("score", "calibration", "keep_rule") if k in settings]
    if fit.get("pi") is not None:
        rows.append(("estimated noise rate", f"{100 * fit['pi']:.1f}%"))
    if fit.get("cut") is not None:
        rows.append(("keep cut (match_score)", _decimals(fit["cut"])))
    return rows


METHOD_ROWS = {"osa": osa_rows, "sdd": sdd_rows, "sps": sps_rows, "clipcleaner": clipcleaner_rows,
               "match": match_rows}  # fmt: skip
METHOD_TITLES = {"osa": "OSA", "sdd": "SDD", "sps": "SPS", "clipcleaner": "CLIPCleaner",
                 "match": "match"}  # fmt: skip


def rows_of(d: ReportData, method: str) -> list[tuple[str, str]]:
    """A method's rows; a method with no rows of its own here (e.g. one
    registered at run time) shows its keep rule's counts and its fitted params."""
    if method in METHOD_ROWS:
        return METHOD_ROWS[method](d)
    params = d.params(method)
    simple = [(k, str(v)) for k, v in params.items() if isinstance(v, (int, float, str, bool))]
    return _kept_rows(d, method) + simple


def title_of(method: str) -> str:
    return METHOD_TITLES.get(method, method)
