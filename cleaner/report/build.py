"""Summary reports of a sidecar: PNG figures with an ``index.html``, or aligned text.

:func:`build_report` writes one PNG per figure and a self-contained
``index.html`` (inline CSS, no scripts, no external assets; it refers only to
the PNGs and ``shards.csv`` next to it). :func:`text_report` returns the same
counts and key numbers as aligned text for a terminal.

Sidecars can hold billions of rows, so the reader streams record batches of
only the columns a report needs and never holds a whole column:

- counts (statuses, per-shard kept / dropped, SPS partitions, CLIPCleaner
  selections per class) and means are exact, tallied over every row;
- histograms and quantiles come from a seeded uniform sample of at most
  ``max_sample_rows`` rows (default 2,000,000); the page says when it sampled.

Only the sections of the methods the sidecar holds are produced.
"""

from __future__ import annotations

import csv
import html
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cleaner.errors import ConfigError, InputError
from cleaner.io import schema as S
from cleaner.io.atomic import atomic_path, write_text

MAX_SAMPLE_ROWS = 2_000_000
BATCH_ROWS = 262_144
MAX_SHARD_BARS = 40  # above this a per-shard bar chart is unreadable: plot the distribution instead
MAX_HTML_SHARDS = 200  # shard rows shown on the page; shards.csv holds them all
MAX_TEXT_SHARDS = 50
MAX_CLASSES_SHOWN = 100
PARTITIONS = ("reliable", "quasi", "noisy")
OSA_PEAK = 4.0 / 27.0  # the OSA weight's maximum (cleaner.methods.osa.scorer.OSA_PEAK)

COLOR = {
    "kept": "#2a9d8f",
    "dropped": "#e76f51",
    "failed": "#adb5bd",
    "reliable": "#2a9d8f",
    "quasi": "#e9c46a",
    "noisy": "#e76f51",
    "hist": "#6c8ebf",
}

# Per-shard counters, in table order; each is present only with its method.
SHARD_COUNTERS = {
    "osa": [("osa_kept", "osa w>0")],
    "sdd": [("sdd_kept", "sdd keep"), ("sdd_clean", "sdd clean set")],
    "sps": [(f"sps_{p}", f"sps {p}") for p in PARTITIONS],
    "clipcleaner": [("cc_selected", "cc selected")],
}


# --------------------------------------------------------------------------- reading


@dataclass
class ReportData:
    """Everything a report shows, tallied in one streaming pass."""

    path: Path
    files: list[Path]
    meta: dict
    methods: list[str]
    n_rows: int = 0
    status: dict[str, int] = field(default_factory=dict)
    shards: list[str] = field(default_factory=list)
    per_shard: dict[str, np.ndarray] = field(default_factory=dict)
    sums: dict[str, float] = field(default_factory=dict)  # exact sums over ok rows with a value
    counts: dict[str, int] = field(default_factory=dict)  # how many values each sum has
    class_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    class_selected: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    sample: dict[str, np.ndarray] = field(default_factory=dict)  # aligned, ok rows only
    max_sample_rows: int = MAX_SAMPLE_ROWS
    seed: int = 0

    @property
    def ok_rows(self) -> int:
        return int(self.status.get("ok", 0))

    @property
    def sample_rows(self) -> int:
        return len(next(iter(self.sample.values()), ()))

    @property
    def sampled(self) -> bool:
        """True when the histograms saw fewer rows than there are ok rows."""
        return self.sample_rows < self.ok_rows

    def total(self, counter: str) -> int:
        return int(self.per_shard[counter].sum()) if counter in self.per_shard else 0

    def mean(self, name: str) -> float | None:
        n = self.counts.get(name, 0)
        return self.sums.get(name, 0.0) / n if n else None

    def params(self, method: str) -> dict:
        return (self.meta.get("params") or {}).get(method) or {}


def _columns_for(methods: list[str]) -> list[str]:
    """The only columns a report reads (keys, uids and neighbour keys are skipped)."""
    cols = ["shard", "status"]
    if "osa" in methods:
        cols += ["cosine", "osa_weight"]
    if "sdd" in methods:
        cols += ["sdd_keep", "sdd_w_con", "sdd_clean"]
    if "sps" in methods:
        cols += ["sps_loss", "sps_partition"]
    if "clipcleaner" in methods:
        cols += ["label", "cc_selected", "cc_label_quality"]
    return cols


def sidecar_files(path: str | Path) -> list[Path]:
    """The Parquet files of a sidecar: the file itself, or a folder's parts."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"sidecar not found: {path}")
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise InputError(f"no sidecar parts (*.parquet) in {path}")
    return files


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_report_metadata(files: list[Path]) -> dict:
    """Validate every file's schema (refusing unknown versions); return the first's metadata."""
    meta = None
    for f in files:
        try:
            m = S.validate(pq.read_schema(f))
        except ValueError as exc:  # SchemaError, or metadata that is not JSON
            raise InputError(f"{f}: {_first_line(exc)}") from None
        except (OSError, pa.ArrowException) as exc:
            raise InputError(f"{f}: not a readable Parquet file ({_first_line(exc)})") from None
        if meta is None:
            meta = m
        elif list(m.get("methods", [])) != list(meta.get("methods", [])):
            raise InputError(
                f"{f}: parts disagree on methods ({m.get('methods')} vs {meta.get('methods')})"
            )
    return meta


class _Tally:
    """Streaming accumulator behind :func:`load_report_data`."""

    def __init__(self, data: ReportData, p_sample: float):
        self.d = data
        self.p = p_sample
        self.rng = np.random.default_rng(data.seed)
        self.shard_id: dict[str, int] = {}
        self.parts: dict[str, list[np.ndarray]] = {}
        names = ["rows", "ok"] + [c for m in data.methods for c, _ in SHARD_COUNTERS[m]]
        data.per_shard = {n: np.zeros(0, np.int64) for n in names}

    # -- helpers -----------------------------------------------------------

    def _shard_ids(self, col: pa.Array) -> np.ndarray:
        """Global shard ids of a batch's rows (dictionary-encoded, so one
        Python lookup per distinct shard, not per row)."""
        enc = pc.dictionary_encode(col)
        ids = []
        for s in enc.dictionary.to_pylist():
            if s not in self.shard_id:
                self.shard_id[s] = len(self.d.shards)
                self.d.shards.append(s)
            ids.append(self.shard_id[s])
        n = len(self.d.shards)
        for name, arr in self.d.per_shard.items():
            if len(arr) < n:
                self.d.per_shard[name] = np.pad(arr, (0, n - len(arr)))
        return np.asarray(ids, np.int64)[enc.indices.to_numpy(zero_copy_only=False)]

    def _count(self, name: str, sid: np.ndarray, mask: np.ndarray) -> None:
        arr = self.d.per_shard[name]
        arr += np.bincount(sid[mask], minlength=len(arr))

    def _sum(self, name: str, values: np.ndarray, ok: np.ndarray) -> np.ndarray:
        """Add the finite ok values to the exact sums; return the finite mask."""
        finite = ok & np.isfinite(values)
        self.d.sums[name] = self.d.sums.get(name, 0.0) + float(values[finite].sum(dtype=np.float64))
        self.d.counts[name] = self.d.counts.get(name, 0) + int(finite.sum())
        return finite

    def _keep_sample(self, name: str, values: np.ndarray, take: np.ndarray) -> None:
        self.parts.setdefault(name, []).append(values[take])

    # -- per batch ---------------------------------------------------------

    def add(self, batch: pa.RecordBatch) -> None:
        n = batch.num_rows
        self.d.n_rows += n
        status = batch.column("status")
        for item in pc.value_counts(status).to_pylist():
            key = item["values"]
            self.d.status[key] = self.d.status.get(key, 0) + int(item["counts"])
        ok = _bool(pc.equal(status, "ok"))
        sid = self._shard_ids(batch.column("shard"))
        self._count("rows", sid, np.ones(n, bool))
        self._count("ok", sid, ok)
        # One Bernoulli draw per row (ok or not), so the sample is uniform
        # over ok rows and the same for the same file.
        take = ok & (self.rng.random(n) < self.p) if self.p < 1 else ok
        for method in self.d.methods:
            getattr(self, f"_add_{method}")(batch, ok, sid, take)

    def _add_osa(self, batch, ok, sid, take):
        cosine = _float(batch.column("cosine"))
        weight = _float(batch.column("osa_weight"))
        self._sum("cosine", cosine, ok)
        self._sum("osa_weight", weight, ok)
        self._count("osa_kept", sid, ok & (weight > 0))
        self._keep_sample("cosine", cosine, take)
        self._keep_sample("osa_weight", weight, take)

    def _add_sdd(self, batch, ok, sid, take):
        keep = _bool(batch.column("sdd_keep"))
        w_con = _float(batch.column("sdd_w_con"))
        self._sum("sdd_w_con", w_con, ok)
        self._count("sdd_kept", sid, ok & keep)
        self._count("sdd_clean", sid, ok & _bool(batch.column("sdd_clean")))
        self._keep_sample("sdd_w_con", w_con, take)
        self._keep_sample("sdd_keep", keep, take)

    def _add_sps(self, batch, ok, sid, take):
        loss = _float(batch.column("sps_loss"))
        self._sum("sps_loss", loss, ok)
        codes = pc.index_in(batch.column("sps_partition"), value_set=pa.array(PARTITIONS))
        codes = pc.fill_null(codes, -1).to_numpy(zero_copy_only=False).astype(np.int8)
        for i, name in enumerate(PARTITIONS):
            self._count(f"sps_{name}", sid, ok & (codes == i))
        self._keep_sample("sps_loss", loss, take)
        self._keep_sample("sps_partition", codes, take)

    def _add_clipcleaner(self, batch, ok, sid, take):
        selected = _bool(batch.column("cc_selected"))
        quality = _float(batch.column("cc_label_quality"))
        self._sum("cc_label_quality", quality, ok)
        self._count("cc_selected", sid, ok & selected)
        label = pc.fill_null(batch.column("label"), -1).to_numpy(zero_copy_only=False)
        has = ok & (label >= 0)
        n_cls = max(len(self.d.class_rows), int(label[has].max()) + 1 if has.any() else 0)
        self.d.class_rows = _grow(self.d.class_rows, n_cls) + np.bincount(
            label[has], minlength=n_cls
        )
        self.d.class_selected = _grow(self.d.class_selected, n_cls) + np.bincount(
            label[has & selected], minlength=n_cls
        )
        self._keep_sample("cc_label_quality", quality, take)
        self._keep_sample("cc_selected", selected, take)

    def finish(self) -> None:
        cap = self.d.max_sample_rows
        # Bernoulli sampling can overshoot its expected size by a few sqrt(cap): trim.
        self.d.sample = {k: np.concatenate(v)[:cap] for k, v in self.parts.items()}


def _grow(arr: np.ndarray, n: int) -> np.ndarray:
    return np.pad(arr, (0, max(0, n - len(arr))))


def _bool(col) -> np.ndarray:
    return pc.fill_null(col, False).to_numpy(zero_copy_only=False).astype(bool)


def _float(col) -> np.ndarray:
    """Float values with nulls as NaN (pyarrow's conversion of a nullable float column)."""
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)


def load_report_data(
    sidecar_path: str | Path, max_sample_rows: int = MAX_SAMPLE_ROWS, seed: int = 0
) -> ReportData:
    """Validate a sidecar (file or folder of parts) and tally it in one streaming pass.

    Raises :class:`~cleaner.errors.InputError` for a missing or unreadable
    sidecar or an unknown schema version.
    """
    if max_sample_rows < 1:
        raise ConfigError("the histogram sample needs at least 1 row")
    files = sidecar_files(sidecar_path)
    meta = read_report_metadata(files)
    methods = [m for m in S.ALL_METHODS if m in meta.get("methods", [])]
    data = ReportData(
        path=Path(sidecar_path),
        files=files,
        meta=meta,
        methods=methods,
        max_sample_rows=max_sample_rows,
        seed=seed,
    )
    total = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    tally = _Tally(data, min(1.0, max_sample_rows / total) if total else 1.0)
    columns = _columns_for(methods)
    for f in files:
        try:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=BATCH_ROWS, columns=columns):
                tally.add(batch)
        except (OSError, pa.ArrowException) as exc:
            raise InputError(f"{f}: cannot read ({_first_line(exc)})") from None
    tally.finish()
    return data


# --------------------------------------------------------------------------- numbers


@dataclass
class Table:
    """A titled table shared by the text and HTML renderers."""

    title: str
    headers: list[str]
    rows: list[list[str]]
    note: str = ""
    text_cols: int = 1  # the first columns hold names (left-aligned); the rest numbers (right)


def _n(x: int | float) -> str:
    return f"{int(x):,}"


def _pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "-"


def _share(part: int, whole: int) -> str:
    """'count  share of ok', padded so that a column of them lines up in text."""
    return f"{_n(part):>{len(_n(whole))}}  {_pct(part, whole):>6} of ok"


def _f(x, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{digits}f}"


def beta_text(beta: dict | None) -> str:
    """beta as 'value ± se (source, K, std, seed)'."""
    if not beta or beta.get("value") is None:
        return "-"
    text = f"{beta['value']:.4f}"
    if beta.get("se"):
        text += f" ± {beta['se']:.4f} (se)"
    extra = [str(beta.get("source", "?"))]
    if beta.get("k"):
        extra.append(f"K={_n(beta['k'])}")
    if beta.get("std"):
        extra.append(f"std {beta['std']:.4f}")
    if beta.get("seed") is not None:
        extra.append(f"seed {beta['seed']}")
    return f"{text}; {', '.join(extra)}"


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


def sample_note(d: ReportData, what: str = "Histograms and quantiles") -> str:
    """Say whether the sampled numbers saw every ok row (counts always do)."""
    if d.sampled:
        return (
            f"{what} use a uniform random sample of {_n(d.sample_rows)} of "
            f"{_n(d.ok_rows)} ok rows (seed {d.seed}); all counts, means and tables are exact."
        )
    return f"{what} use all {_n(d.ok_rows)} ok rows; counts, means and tables are exact."


def run_rows(d: ReportData) -> list[tuple[str, str]]:
    """The run's metadata: version, estimator, beta, methods, sizes."""
    m = d.meta
    est = m.get("estimator") or {}
    est_text = " / ".join(str(est[k]) for k in ("model", "pretrained") if est.get(k)) or "-"
    if est.get("pretrained_digest"):
        est_text += f" (digest {est['pretrained_digest']})"
    rows = [
        ("sidecar", str(d.path)),
        ("rows", f"{_n(d.n_rows)} in {_n(len(d.shards))} shard(s), {len(d.files)} file(s)"),
        (
            "nclean version",
            f"{m.get('nclean_version', '?')} (schema {m.get('schema_version', '?')})",
        ),
        ("estimator", est_text),
        ("methods", ", ".join(d.methods) or "-"),
    ]
    if m.get("beta"):
        rows.append(("beta (OSA boundary)", beta_text(m["beta"])))
    if m.get("fit_id"):
        rows.append(("fit id", str(m["fit_id"])))
    return rows


def osa_rows(d: ReportData) -> list[tuple[str, str]]:
    ok = d.ok_rows
    kept = d.total("osa_kept")
    return [
        ("kept (osa_weight > 0)", _share(kept, ok)),
        ("zero weight", _share(ok - kept, ok)),
        ("mean osa_weight", f"{_f(d.mean('osa_weight'))} (peak {OSA_PEAK:.4f})"),
        ("mean cosine", _f(d.mean("cosine"))),
        ("cosine p5 / p50 / p95", _quantiles(d.sample.get("cosine", np.zeros(0)))),
    ]


def sdd_rows(d: ReportData) -> list[tuple[str, str]]:
    p, ok = d.params("sdd"), d.ok_rows
    scale = float(p.get("scale") or 100.0)
    kept, clean = d.total("sdd_kept"), d.total("sdd_clean")
    rows = []
    if p.get("alpha") is not None:
        rows.append(("alpha (self-drop)", f"{p['alpha']:g} = cosine {p['alpha'] / scale:.3f}"))
    if p.get("beta_c") is not None:
        rows.append(("beta_c (clean set)", f"{p['beta_c']:g} = cosine {p['beta_c'] / scale:.3f}"))
    rows += [
        ("kept (sdd_keep)", _share(kept, ok)),
        ("dropped", _share(ok - kept, ok)),
        ("clean set (sdd_clean)", _share(clean, ok)),
        ("mean sdd_w_con", _f(d.mean("sdd_w_con"))),
    ]
    if p.get("fit_rows") is not None:
        rows.append(
            (
                "GMM fit rows",
                f"{_n(p['fit_rows'])} of {_n(p.get('fit_rows_total') or p['fit_rows'])}",
            )
        )
    return rows + _gmm_text(p.get("gmm"), "cosine", scale)  # shown in cosine units


def sps_rows(d: ReportData) -> list[tuple[str, str]]:
    p, ok = d.params("sps"), d.ok_rows
    rows = [(part, _share(d.total(f"sps_{part}"), ok)) for part in PARTITIONS]
    rows.append(("eps1 / eps2", f"{p.get('eps1', '?')} / {p.get('eps2', '?')}"))
    rows.append(("mean sps_loss", _f(d.mean("sps_loss"))))
    if p.get("loss_min") is not None:
        rows.append(
            ("GMM loss range", f"{p['loss_min']:.4f} .. {p['loss_max']:.4f} (min-max normalised)")
        )
    if p.get("fit_rows") is not None:
        rows.append(
            (
                "GMM fit rows",
                f"{_n(p['fit_rows'])} of {_n(p.get('fit_rows_total') or p['fit_rows'])}",
            )
        )
    rows += [
        (k, str(p[k]))
        for k in ("proxy_label", "batch_size", "forced_noisy_threshold")
        if p.get(k) is not None
    ]
    return rows + _gmm_text(p.get("gmm"), "normalised loss")  # on the normalised loss


def clipcleaner_rows(d: ReportData) -> list[tuple[str, str]]:
    p, ok = d.params("clipcleaner"), d.ok_rows
    sel = d.total("cc_selected")
    rows = [
        ("selected (cc_selected)", _share(sel, ok)),
        ("not selected", _share(ok - sel, ok)),
        ("mean cc_label_quality", _f(d.mean("cc_label_quality"))),
        ("classes", str(len(p.get("classes") or []) or len(d.class_rows))),
    ]
    settings = p.get("settings") or {}
    for k in ("combine", "estimators", "selectors", "induced", "theta_cons", "theta_gmm"):
        if k in settings:
            v = settings[k]
            rows.append((k, ", ".join(map(str, v)) if isinstance(v, list) else str(v)))
    if p.get("n_fit") is not None:
        rows.append(("fit rows", _n(p["n_fit"])))
    return rows


METHOD_ROWS = {"osa": osa_rows, "sdd": sdd_rows, "sps": sps_rows, "clipcleaner": clipcleaner_rows}
METHOD_TITLES = {"osa": "OSA", "sdd": "SDD", "sps": "SPS", "clipcleaner": "CLIPCleaner"}


def status_table(d: ReportData) -> Table:
    # ok first, then failures by count: the eye looks for "how many failed, and why"
    items = sorted(d.status.items(), key=lambda kv: (kv[0] != "ok", -kv[1], kv[0]))
    return Table(
        "Status", ["status", "rows", "share"], [[k, _n(v), _pct(v, d.n_rows)] for k, v in items]
    )


def shard_counters(d: ReportData) -> list[tuple[str, str]]:
    return [c for m in d.methods for c in SHARD_COUNTERS[m]]


def shard_table(d: ReportData, limit: int | None) -> Table:
    """Per-shard rows, ok, failed and each method's kept count (first ``limit`` shards)."""
    counters = shard_counters(d)
    order = sorted(range(len(d.shards)), key=lambda i: d.shards[i])
    shown = order if limit is None else order[:limit]
    rows = []
    for i in shown:
        ps = d.per_shard
        row = [d.shards[i], _n(ps["rows"][i]), _n(ps["ok"][i]), _n(ps["rows"][i] - ps["ok"][i])]
        row += [_n(ps[c][i]) for c, _ in counters]
        rows.append(row)
    note = f"first {len(shown)} of {_n(len(order))} shards" if len(shown) < len(order) else ""
    return Table(
        "Shards", ["shard", "rows", "ok", "failed"] + [label for _, label in counters], rows, note
    )


def class_table(d: ReportData, limit: int = MAX_CLASSES_SHOWN) -> Table:
    names = d.params("clipcleaner").get("classes") or []
    rows = []
    for c in range(len(d.class_rows)):
        n, s = int(d.class_rows[c]), int(d.class_selected[c])
        if n == 0:
            continue
        rows.append([str(c), str(names[c]) if c < len(names) else "", _n(n), _n(s), _pct(s, n)])
    note = f"first {limit} of {len(rows)} classes" if len(rows) > limit else ""
    return Table(
        "CLIPCleaner selection per class",
        ["label", "class", "ok rows", "selected", "share"],
        rows[:limit],
        note,
        text_cols=2,
    )


def neighbor_table(d: ReportData) -> Table | None:
    nb = d.meta.get("neighbors") or {}
    if not nb:
        return None
    rows = []
    for name, info in sorted(nb.items()):
        info = info or {}
        kind = str(info.get("kind", "?")) + (" (gpu)" if info.get("gpu") else "")
        if info.get("nlist"):
            kind += f", nlist {info['nlist']}, nprobe {info.get('nprobe')}"
        recall = info.get("recall_at_1")
        rows.append(
            [name, kind, _n(info.get("ntotal") or 0), "-" if recall is None else f"{recall:.4f}"]
        )
    return Table("Neighbour indexes", ["index", "kind", "rows", "recall@1"], rows, text_cols=2)


def _flatten(obj, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(obj, dict):
        out = []
        for k in sorted(obj):
            out += _flatten(obj[k], f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(obj, list):
        return [(prefix, ", ".join(map(str, obj)))]
    return [(prefix, "-" if obj is None else str(obj))]


# Settings prefixes that belong to one method; hidden when that method is absent.
_SETTING_OWNER = {"sdd_": "sdd", "sps_": "sps", "cc_": "clipcleaner"}


def settings_rows(d: ReportData) -> list[tuple[str, str]]:
    """The job's settings, flattened, without those of methods the sidecar lacks."""
    rows = []
    for key, value in _flatten(d.meta.get("settings") or {}):
        leaf = key.rsplit(".", 1)[-1]
        owner = next((m for pre, m in _SETTING_OWNER.items() if leaf.startswith(pre)), None)
        if owner is None or owner in d.methods:
            rows.append((key, value))
    return rows


def argv_text(d: ReportData) -> str:
    argv = d.meta.get("argv") or []
    return "nclean " + " ".join(map(str, argv)) if argv else ""


# --------------------------------------------------------------------------- text


def _kv_lines(rows: list[tuple[str, str]], indent: str = "  ") -> list[str]:
    width = max((len(k) for k, _ in rows), default=0)
    return [f"{indent}{k:<{width}}  {v}" for k, v in rows]


def _table_lines(t: Table, indent: str = "  ") -> list[str]:
    cells = [t.headers] + t.rows
    widths = [max(len(r[i]) for r in cells) for i in range(len(t.headers))]

    def line(r):
        parts = [
            c.ljust(w) if i < t.text_cols else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        return indent + "  ".join(parts).rstrip()

    out = [line(t.headers)] + [line(r) for r in t.rows]
    if t.note:
        out.append(f"{indent}({t.note})")
    return out


def format_text(d: ReportData) -> str:
    """The terminal report: the page's counts and key numbers, aligned."""
    out = [f"nclean report: {d.path}"]
    out += _kv_lines(run_rows(d)[1:])
    out += ["", "status"] + _table_lines(status_table(d))[1:]
    for m in d.methods:
        out += ["", METHOD_TITLES[m]] + _kv_lines(METHOD_ROWS[m](d))
    nb = neighbor_table(d)
    if nb:
        out += ["", "neighbour indexes"] + _table_lines(nb)
    out += ["", "shards"] + _table_lines(shard_table(d, MAX_TEXT_SHARDS))
    if "clipcleaner" in d.methods:
        out += ["", "CLIPCleaner per class"] + _table_lines(class_table(d, MAX_TEXT_SHARDS))
    settings = settings_rows(d)
    if settings:
        out += ["", "settings"] + _kv_lines(settings)
    if argv_text(d):
        out += ["", "command", f"  {argv_text(d)}"]
    out += ["", sample_note(d, "Quantiles")]
    return "\n".join(out) + "\n"


def text_report(
    sidecar_path: str | Path, max_sample_rows: int = MAX_SAMPLE_ROWS, seed: int = 0
) -> str:
    """Return the terminal report of a sidecar (file or folder of parts)."""
    return format_text(load_report_data(sidecar_path, max_sample_rows=max_sample_rows, seed=seed))


# --------------------------------------------------------------------------- figures


def _figure(nrows: int = 1, height: float = 3.4, width: float = 7.2, sharex: bool = False):
    """A matplotlib figure on the Agg canvas, without pyplot's global state
    (so a report never opens a window or changes the caller's backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height * nrows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, 1, sharex=sharex, squeeze=False)[:, 0]
    for ax in axes:
        ax.grid(True, alpha=0.25)
        ax.set_axisbelow(True)
    return fig, axes


def _save(fig, out_dir: Path, name: str) -> str:
    """Write a PNG atomically (temp file in the same folder, then rename)."""
    with atomic_path(out_dir / name) as tmp:
        fig.savefig(tmp, format="png")
    return name


def _finite(x: np.ndarray) -> np.ndarray:
    return x[np.isfinite(x)]


def _edges(
    x: np.ndarray, lo: float | None = None, hi: float | None = None, bins: int = 80
) -> np.ndarray:
    lo = float(np.min(x)) if lo is None else lo
    hi = float(np.max(x)) if hi is None else hi
    if hi <= lo:  # one distinct value: give it a visible bin
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, bins + 1)


def _hist(ax, groups, edges, colors, labels, stacked: bool = True, alpha: float = 0.85) -> None:
    """Histograms binned by numpy and drawn as filled steps: one artist per
    group instead of one rectangle per bin, which keeps drawing fast."""
    base = np.zeros(len(edges) - 1)
    for values, color, label in zip(groups, colors, labels, strict=True):
        counts = np.histogram(values, bins=edges)[0].astype(float)
        top = base + counts if stacked else counts
        ax.stairs(
            top,
            edges,
            baseline=base if stacked else 0,
            fill=True,
            color=color,
            alpha=alpha,
            label=label,
        )
        base = top if stacked else base
    ax.set_ylim(bottom=0)


def _normal_pdf(x: np.ndarray, mean: float, sd: float) -> np.ndarray:
    return np.exp(-0.5 * ((x - mean) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))


def _draw_gmm(
    ax, gmm: dict | None, edges: np.ndarray, n: int, to_x, scale: float, names=("low", "high")
) -> None:
    """Draw a fitted 2-component GMM as densities scaled to histogram counts.

    The GMM lives on its own scale u; ``to_x`` maps u to the plotted x and
    ``scale`` is dx/du, so a component's count density on x is
    n * bin_width * w * N(u; mean, var) / scale.
    """
    if not gmm or not gmm.get("means") or n == 0:
        return
    xs = np.linspace(edges[0], edges[-1], 400)
    width = edges[1] - edges[0]
    total = np.zeros_like(xs)
    order = np.argsort(gmm["means"])
    for rank, k in enumerate(order):
        mean_x, sd_x = to_x(gmm["means"][k]), math.sqrt(gmm["variances"][k]) * scale
        y = n * width * gmm["weights"][k] * _normal_pdf(xs, mean_x, sd_x)
        total += y
        ax.plot(
            xs,
            y,
            lw=1.6,
            ls="--",
            label=f"GMM {names[rank]}: w {gmm['weights'][k]:.2f}, mean {mean_x:.3f}",
        )
    ax.plot(xs, total, lw=1.2, color="#333333", alpha=0.7, label="GMM mixture")


def fig_cosine(d: ReportData, out_dir: Path) -> str | None:
    """Cosine histogram, OSA's beta, SDD's thresholds and SDD's GMM components."""
    x = _finite(d.sample.get("cosine", np.zeros(0)))
    if not len(x):
        return None
    fig, (ax,) = _figure()
    edges = _edges(x)
    _hist(ax, [x], edges, [COLOR["hist"]], ["cosine (ok rows)"], alpha=0.75)
    beta = (d.meta.get("beta") or {}).get("value")
    if beta is not None:
        ax.axvline(beta, color="#d62828", lw=2, label=f"OSA beta = {beta:.4f}")
    if "sdd" in d.methods:
        p = d.params("sdd")
        scale = float(p.get("scale") or 100.0)
        for key, style, what in (("alpha", ":", "SDD alpha"), ("beta_c", "-.", "SDD beta_c")):
            if p.get(key) is not None:
                ax.axvline(
                    p[key] / scale,
                    color="#6a4c93",
                    lw=1.6,
                    ls=style,
                    label=f"{what} = {p[key] / scale:.2f}",
                )
        # the SDD mixture is fitted on scale*cosine: u -> u/scale, sd shrinks by 1/scale
        _draw_gmm(ax, p.get("gmm"), edges, len(x), lambda u: u / scale, 1.0 / scale)
    ax.set_xlabel("cosine(image, text)")
    ax.set_ylabel("rows" + (" (sample)" if d.sampled else ""))
    ax.set_title("Cosine similarity")
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, out_dir, "cosine.png")


def fig_osa_weight(d: ReportData, out_dir: Path) -> str | None:
    w = _finite(d.sample.get("osa_weight", np.zeros(0)))
    if not len(w):
        return None
    fig, (ax,) = _figure()
    pos = w[w > 0]
    # zero weights would dwarf everything else: state their share instead of drawing them
    _hist(ax, [pos], _edges(pos, 0.0, OSA_PEAK, 60), [COLOR["kept"]], [None])
    zero = len(w) - len(pos)
    ax.text(
        0.98,
        0.95,
        f"weight 0 (not drawn): {_pct(zero, len(w))} of ok rows",
        transform=ax.transAxes,
        ha="right",
        va="top",
        fontsize=8,
        bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "#cccccc"},
    )
    ax.set_xlabel("osa_weight (rows with weight > 0)")
    ax.set_ylabel("rows" + (" (sample)" if d.sampled else ""))
    ax.set_title("OSA weight")
    return _save(fig, out_dir, "osa_weight.png")


def fig_sdd_w_con(d: ReportData, out_dir: Path) -> str | None:
    w = d.sample.get("sdd_w_con", np.zeros(0))
    keep = d.sample.get("sdd_keep", np.zeros(0, bool))
    fin = np.isfinite(w)
    if not fin.any():
        return None
    fig, (ax,) = _figure()
    edges = _edges(w[fin], 0.0, 1.0, 50)
    labels = [
        f"kept ({_n(d.total('sdd_kept'))})",
        f"dropped ({_n(d.ok_rows - d.total('sdd_kept'))})",
    ]
    _hist(ax, [w[fin & keep], w[fin & ~keep]], edges, [COLOR["kept"], COLOR["dropped"]], labels)
    ax.set_xlabel("sdd_w_con (confidence weight)")
    ax.set_ylabel("rows" + (" (sample)" if d.sampled else ""))
    ax.set_title("SDD confidence weight, by sdd_keep")
    ax.legend(fontsize=8)
    return _save(fig, out_dir, "sdd_w_con.png")


def fig_sps_loss(d: ReportData, out_dir: Path) -> str | None:
    """SPS per-sample loss, stacked by partition, with the loss GMM's components."""
    loss = d.sample.get("sps_loss", np.zeros(0))
    codes = d.sample.get("sps_partition", np.zeros(0, np.int8))
    fin = np.isfinite(loss)
    if not fin.any():
        return None
    fig, (ax,) = _figure()
    edges = _edges(loss[fin])
    groups = [loss[fin & (codes == i)] for i in range(len(PARTITIONS))]
    labels = [f"{p} ({_n(d.total(f'sps_{p}'))})" for p in PARTITIONS]
    _hist(ax, groups, edges, [COLOR[p] for p in PARTITIONS], labels)
    p = d.params("sps")
    if p.get("loss_min") is not None and p.get("loss_max") is not None:
        lo, span = float(p["loss_min"]), float(p["loss_max"]) - float(p["loss_min"])
        # fitted on (loss - min) / span: map means back, widths scale by span
        _draw_gmm(
            ax,
            p.get("gmm"),
            edges,
            int(fin.sum()),
            lambda u: lo + u * span,
            span,
            names=("clean", "noisy"),
        )
    ax.set_xlabel("sps_loss (per-sample InfoNCE)")
    ax.set_ylabel("rows" + (" (sample)" if d.sampled else ""))
    ax.set_title("SPS loss by partition (legend counts: all rows)")
    ax.legend(fontsize=7)
    return _save(fig, out_dir, "sps_loss.png")


def fig_cc_quality(d: ReportData, out_dir: Path) -> str | None:
    q = d.sample.get("cc_label_quality", np.zeros(0))
    sel = d.sample.get("cc_selected", np.zeros(0, bool))
    fin = np.isfinite(q)
    if not fin.any():
        return None
    fig, (ax,) = _figure()
    edges = _edges(q[fin], bins=50)
    labels = [
        f"selected ({_n(d.total('cc_selected'))})",
        f"not selected ({_n(d.ok_rows - d.total('cc_selected'))})",
    ]
    # overlaid, not stacked: the two shapes are what the eye compares
    _hist(
        ax,
        [q[fin & sel], q[fin & ~sel]],
        edges,
        [COLOR["kept"], COLOR["dropped"]],
        labels,
        stacked=False,
        alpha=0.55,
    )
    ax.set_xlabel("cc_label_quality")
    ax.set_ylabel("rows" + (" (sample)" if d.sampled else ""))
    ax.set_title("CLIPCleaner label quality, by cc_selected")
    ax.legend(fontsize=8)
    return _save(fig, out_dir, "cc_label_quality.png")


def _bars(ax, names: list[str], values: list[int], colors) -> None:
    """Horizontal bars labelled with their counts; log scale when counts span decades
    (a handful of failures next to millions of ok rows must stay visible)."""
    y = np.arange(len(names))
    ax.barh(y, values, color=colors)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    positive = [v for v in values if v > 0]
    if positive and max(positive) / min(positive) > 100:
        ax.set_xscale("log")
    for yi, v in zip(y, values, strict=True):
        ax.text(v if v > 0 else 0, yi, f" {_n(v)}", va="center", fontsize=8)
    ax.margins(x=0.15)


def fig_status(d: ReportData, out_dir: Path) -> str | None:
    t = status_table(d)
    if not t.rows:
        return None
    names = [r[0] for r in t.rows]
    fig, (ax,) = _figure(height=max(1.6, 0.35 * len(names) + 0.9))
    _bars(
        ax,
        names,
        [d.status[k] for k in names],
        [COLOR["kept"] if k == "ok" else COLOR["failed"] for k in names],
    )
    ax.set_xlabel("rows")
    ax.set_title("Rows per status")
    return _save(fig, out_dir, "status.png")


def fig_partitions(d: ReportData, out_dir: Path) -> str | None:
    if not d.ok_rows:
        return None
    fig, (ax,) = _figure(height=1.9)
    _bars(
        ax,
        list(PARTITIONS),
        [d.total(f"sps_{p}") for p in PARTITIONS],
        [COLOR[p] for p in PARTITIONS],
    )
    ax.set_xlabel("ok rows")
    ax.set_title("SPS partitions")
    return _save(fig, out_dir, "sps_partition.png")


def _shard_panels(d: ReportData) -> list[tuple[str, list[tuple[str, np.ndarray, str]]]]:
    """Per method: (title, [(label, per-shard counts, colour), ...]) stacked to the shard's rows."""
    ps = d.per_shard
    failed = ps["rows"] - ps["ok"]
    panels = []
    if "osa" in d.methods:
        panels.append(
            (
                "OSA: osa_weight > 0",
                [
                    ("kept", ps["osa_kept"], COLOR["kept"]),
                    ("weight 0", ps["ok"] - ps["osa_kept"], COLOR["dropped"]),
                ],
            )
        )
    if "sdd" in d.methods:
        panels.append(
            (
                "SDD: sdd_keep",
                [
                    ("kept", ps["sdd_kept"], COLOR["kept"]),
                    ("dropped", ps["ok"] - ps["sdd_kept"], COLOR["dropped"]),
                ],
            )
        )
    if "sps" in d.methods:
        panels.append(("SPS partitions", [(p, ps[f"sps_{p}"], COLOR[p]) for p in PARTITIONS]))
    if "clipcleaner" in d.methods:
        panels.append(
            (
                "CLIPCleaner: cc_selected",
                [
                    ("selected", ps["cc_selected"], COLOR["kept"]),
                    ("not selected", ps["ok"] - ps["cc_selected"], COLOR["dropped"]),
                ],
            )
        )
    tail = [("failed", failed, COLOR["failed"])] if failed.any() else []  # no empty legend entry
    return [(title, parts + tail) for title, parts in panels]


def fig_shards(d: ReportData, out_dir: Path) -> str | None:
    """Kept / dropped per shard: stacked bars for few shards, the spread of
    the kept share across shards for many."""
    panels = _shard_panels(d)
    if not panels or not d.shards:
        return None
    order = sorted(range(len(d.shards)), key=lambda i: d.shards[i])
    few = len(order) <= MAX_SHARD_BARS
    fig, axes = _figure(nrows=len(panels), height=2.3, sharex=few)
    for ax, (title, parts) in zip(axes, panels, strict=True):
        if few:
            x = np.arange(len(order))
            bottom = np.zeros(len(order))
            for label, counts, color in parts:
                ax.bar(x, counts[order], bottom=bottom, color=color, label=label, width=0.8)
                bottom += counts[order]
            ax.set_ylabel("rows")
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        else:
            rows = np.maximum(d.per_shard["rows"][order], 1)
            share = 100.0 * parts[0][1][order] / rows
            _hist(ax, [share], _edges(share, bins=40), [parts[0][2]], [None])
            ax.set_ylabel("shards")
            ax.set_xlabel(f"% of a shard's rows: {parts[0][0]}")
        ax.set_title(title, fontsize=9)
    if few:
        names = [Path(d.shards[i]).stem for i in order]
        axes[-1].set_xticks(
            np.arange(len(order)), names, rotation=90 if len(order) > 8 else 0, fontsize=7
        )
        axes[-1].set_xlabel("shard")
    fig.suptitle(f"Kept / dropped per shard ({_n(len(order))} shards)", fontsize=10)
    return _save(fig, out_dir, "shards.png")


# --------------------------------------------------------------------------- HTML

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#222;background:#f6f7f9}
header{background:#264653;color:#fff;padding:14px 24px}
header h1{margin:0;font-size:20px}header p{margin:4px 0 0;opacity:.85;word-break:break-all}
nav{padding:8px 24px;background:#e9eef2;font-size:13px}nav a{margin-right:14px;color:#264653}
main{padding:8px 24px 40px;max-width:1400px}
section{background:#fff;border:1px solid #dde2e6;border-radius:6px;margin:16px 0;padding:4px 16px 14px}
h2{font-size:17px;margin:12px 0 8px;color:#264653}h3{font-size:14px;margin:12px 0 6px}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(440px,1fr));gap:14px;align-items:start}
.grid.one{grid-template-columns:minmax(0,1fr)}
figure{margin:0}figure img{max-width:100%;height:auto;border:1px solid #eee}
table{border-collapse:collapse;font-size:13px;margin:4px 0}
td,th{border-bottom:1px solid #e5e8eb;padding:3px 10px 3px 0;text-align:left;vertical-align:top}
th{color:#555;font-weight:600;white-space:nowrap}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
table.kv td:first-child{color:#555;white-space:nowrap}
.note{color:#666;font-size:12px;margin:6px 0}
.scroll{max-height:420px;overflow:auto}
code{background:#f0f2f4;padding:2px 4px;border-radius:3px;word-break:break-all}
"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _kv_html(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in rows)
    return f'<table class="kv">{body}</table>'


def _table_html(t: Table, title: bool = True) -> str:
    def cls(i):
        return ' class="num"' if i >= t.text_cols else ""

    head = "".join(f"<th{cls(i)}>{_e(h)}</th>" for i, h in enumerate(t.headers))
    body = "".join(
        "<tr>" + "".join(f"<td{cls(i)}>{_e(c)}</td>" for i, c in enumerate(r)) + "</tr>"
        for r in t.rows
    )
    # one <div>: in the section grid, a table's heading and note stay with it
    out = f"<div><h3>{_e(t.title)}</h3>" if title else "<div>"
    out += f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
    if t.note:
        out += f'<p class="note">{_e(t.note)}</p>'
    return out + "</div>"


def _img(name: str | None, alt: str) -> str:
    return f'<figure><img src="{_e(name)}" alt="{_e(alt)}"></figure>' if name else ""


def _section(anchor: str, title: str, *blocks: str, wide: bool = False) -> str:
    """A card whose blocks flow in a two-column grid, or stack when ``wide``
    (for tables with many columns, which must not be squeezed)."""
    grid = "grid one" if wide else "grid"
    body = "".join(b for b in blocks if b)
    return (
        f'<section id="{_e(anchor)}"><h2>{_e(title)}</h2><div class="{grid}">{body}</div></section>'
    )


def _method_section(d: ReportData, method: str, figs: dict[str, str | None]) -> str:
    kv = _kv_html(METHOD_ROWS[method](d))
    if method == "osa":
        return _section(
            "osa",
            "OSA — one-step anti-noise",
            kv,
            _img(figs.get("cosine"), "cosine histogram"),
            _img(figs.get("osa_weight"), "osa_weight histogram"),
        )
    if method == "sdd":
        # the cosine figure carries SDD's thresholds and GMM; repeat it here only when OSA has not shown it
        cos = "" if "osa" in d.methods else _img(figs.get("cosine"), "cosine histogram")
        return _section(
            "sdd",
            "SDD — self-drop and dual weight",
            kv,
            cos,
            _img(figs.get("sdd_w_con"), "sdd_w_con histogram"),
        )
    if method == "sps":
        return _section(
            "sps",
            "SPS — proxy points",
            kv,
            _img(figs.get("sps_loss"), "SPS loss histogram"),
            _img(figs.get("sps_partition"), "SPS partition counts"),
        )
    return _section(
        "clipcleaner",
        "CLIPCleaner — label-noise selection",
        kv,
        _img(figs.get("cc_label_quality"), "label quality by selection"),
        _table_html(class_table(d)),
    )


def render_html(d: ReportData, figs: dict[str, str | None], shards_csv: str | None) -> str:
    """The page: header, run metadata, statuses, one section per method, shards, settings."""
    nav = (
        [("run", "Run"), ("status", "Status")]
        + [(m, METHOD_TITLES[m]) for m in d.methods]
        + [("shards", "Shards"), ("settings", "Settings")]
    )
    nav_html = "".join(f'<a href="#{a}">{_e(t)}</a>' for a, t in nav)
    parts = [
        _section(
            "run",
            "Run",
            _kv_html(run_rows(d)),
            _table_html(neighbor_table(d)) if neighbor_table(d) else "",
        ),
        _section(
            "status",
            "Status",
            _table_html(status_table(d), title=False),
            _img(figs.get("status"), "rows per status"),
        ),
    ]
    parts += [_method_section(d, m, figs) for m in d.methods]
    csv_link = (
        f'<p class="note">All shards: <a href="{_e(shards_csv)}">{_e(shards_csv)}</a></p>'
        if shards_csv
        else ""
    )
    parts.append(
        _section(
            "shards",
            "Shards",
            f"<div>{_table_html(shard_table(d, MAX_HTML_SHARDS), title=False)}{csv_link}</div>",
            _img(figs.get("shards"), "kept and dropped per shard"),
            wide=True,
        )
    )
    cmd = f"<h3>Command</h3><p><code>{_e(argv_text(d))}</code></p>" if argv_text(d) else ""
    parts.append(_section("settings", "Settings", f"<div>{_kv_html(settings_rows(d))}{cmd}</div>"))
    title = f"nclean report — {d.path.name or d.path}"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><title>{_e(title)}</title>'
        f"<style>{_CSS}</style></head><body>"
        f"<header><h1>{_e(title)}</h1><p>{_e(d.path)} · {_n(d.n_rows)} rows · {_n(d.ok_rows)} ok · "
        f"methods: {_e(', '.join(d.methods) or '-')}</p></header>"
        f'<nav>{nav_html}</nav><main><p class="note">{_e(sample_note(d))}</p>{"".join(parts)}</main></body></html>\n'
    )


def _shards_csv(d: ReportData) -> str:
    t = shard_table(d, None)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(t.headers)
    for row in t.rows:
        w.writerow(
            [row[0]] + [c.replace(",", "") for c in row[1:]]
        )  # plain integers for spreadsheets
    return buf.getvalue()


FIGURES = {
    "status": fig_status,
    "cosine": fig_cosine,
    "osa_weight": fig_osa_weight,
    "sdd_w_con": fig_sdd_w_con,
    "sps_loss": fig_sps_loss,
    "sps_partition": fig_partitions,
    "cc_label_quality": fig_cc_quality,
    "shards": fig_shards,
}
FIGURE_METHODS = {
    "cosine": ("osa",),
    "osa_weight": ("osa",),
    "sdd_w_con": ("sdd",),
    "sps_loss": ("sps",),
    "sps_partition": ("sps",),
    "cc_label_quality": ("clipcleaner",),
}


def build_report(
    sidecar_path: str | Path,
    out_dir: str | Path,
    max_sample_rows: int = MAX_SAMPLE_ROWS,
    seed: int = 0,
) -> Path:
    """Write the figures, ``shards.csv`` and ``index.html`` into ``out_dir``; return index.html's path.

    Every file is written atomically. Raises InputError for a missing or
    unreadable sidecar or an unknown schema version, ConfigError when
    ``out_dir`` exists as a file.
    """
    d = load_report_data(sidecar_path, max_sample_rows=max_sample_rows, seed=seed)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"report folder {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    figs = {}
    for name, draw in FIGURES.items():
        if all(m in d.methods for m in FIGURE_METHODS.get(name, ())):
            figs[name] = draw(d, out)
    write_text(out / "shards.csv", _shards_csv(d))
    index = out / "index.html"
    write_text(index, render_html(d, figs, "shards.csv"))
    return index
