"""Reading a sidecar for a report: one streaming pass that tallies what every report shows.

Sidecars can hold billions of rows, so the reader streams record batches of
only the columns a report needs and never holds a whole column:

- counts (statuses, per-shard kept / dropped, SPS partitions, CLIPCleaner
  selections per class) and means are exact, tallied over every row; a
  method's kept rows are those its own keep rule keeps (``keep_expr`` as the
  method registry declares it, filled from the sidecar's fitted params: the
  rule ``nclean score`` prints), so the report and the score summary count
  alike, for a method registered at run time too;
- histograms and quantiles come from a seeded uniform sample of at most
  ``max_sample_rows`` rows (default 2,000,000).

A module of its own because the text report, the figures and the HTML page
all read the same :class:`ReportData` and none of them touches Parquet.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cleaner.errors import ConfigError, InputError
from cleaner.io import schema as S
from cleaner.methods import catalog
from cleaner.train.expressions import evaluate_table

MAX_SAMPLE_ROWS = 2_000_000
BATCH_ROWS = 262_144
PARTITIONS = ("reliable", "quasi", "noisy")
OSA_PEAK = 4.0 / 27.0  # the OSA weight's maximum (cleaner.methods.osa.scorer.OSA_PEAK)

# Per-shard counters besides each method's kept count (``<method>_kept``,
# by its keep rule), in table order; each is present only with its method.
SHARD_COUNTERS = {
    "sdd": [("sdd_clean", "sdd clean set")],
    "sps": [(f"sps_{p}", f"sps {p}") for p in PARTITIONS],
}


def keep_rules(methods: list[str], meta: dict) -> dict[str, str]:
    """Each method's keep rule for this sidecar: its registered ``keep_expr``
    filled from the fitted params in the metadata (methods without one, or
    not registered in this process, have none)."""
    params = meta.get("params") or {}
    rules = {}
    for m in methods:
        method = catalog.REGISTRY.get(m)
        p = params.get(m) or {}
        if m == "osa" and "beta" not in p and meta.get("beta"):
            p = {**p, "beta": meta["beta"]}  # sidecars from before params carried it
        rule = method.keep_where(p) if method is not None else None
        if rule:
            rules[m] = rule
    return rules


def rule_text(rule: str) -> str:
    """A keep rule for a title or a label: long decimals cut to 4 places."""
    return re.sub(r"-?\d+\.\d{5,}(?:e-?\d+)?", lambda m: f"{float(m.group()):.4f}", rule)


def rule_columns(rule: str) -> set[str]:
    """The sidecar columns a keep rule reads."""
    return {n.id for n in ast.walk(ast.parse(rule, mode="eval")) if isinstance(n, ast.Name)}


def shard_counters(d: ReportData) -> list[tuple[str, str]]:
    """(counter, label) of the per-shard table: each method's kept count, then its extras."""
    out = []
    for m in d.methods:
        if m in d.rules:
            out.append((f"{m}_kept", f"{m} keep"))
        out += SHARD_COUNTERS.get(m, [])
    return out


@dataclass
class ReportData:
    """Everything a report shows, tallied in one streaming pass."""

    path: Path
    files: list[Path]
    meta: dict
    methods: list[str]
    rules: dict[str, str] = field(default_factory=dict)  # method -> its keep rule (keep_rules)
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


def _columns_for(methods: list[str], rules: dict[str, str]) -> list[str]:
    """The only columns a report reads (keys, uids and neighbour keys are skipped)."""
    cols = ["shard", "status", *sorted(set().union(*map(rule_columns, rules.values())))]
    if "osa" in methods:
        cols += ["cosine", "osa_weight"]
    if "sdd" in methods:
        cols += ["sdd_keep", "sdd_w_con", "sdd_clean"]
    if "sps" in methods:
        cols += ["sps_loss", "sps_partition"]
    if "clipcleaner" in methods:
        cols += ["label", "cc_selected", "cc_label_quality"]
    if "match" in methods:
        cols += ["match_keep", "match_clean_prob"]
    return list(dict.fromkeys(cols))


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
        names = ["rows", "ok"] + [c for c, _ in shard_counters(data)]
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
        table = pa.Table.from_batches([batch])
        for method, rule in self.d.rules.items():
            keep = evaluate_table(table, rule, True) & ok  # unknown (null) is not kept
            self._count(f"{method}_kept", sid, keep)
            self._keep_sample(f"{method}_keep", keep, take)
        for method in self.d.methods:  # what a report shows beside the verdict
            extra = getattr(self, f"_add_{method}", None)
            if extra is not None:
                extra(batch, ok, sid, take)

    def _add_osa(self, batch, ok, sid, take):
        cosine = _float(batch.column("cosine"))
        weight = _float(batch.column("osa_weight"))
        self._sum("cosine", cosine, ok)
        self._sum("osa_weight", weight, ok)
        self._keep_sample("cosine", cosine, take)
        self._keep_sample("osa_weight", weight, take)

    def _add_sdd(self, batch, ok, sid, take):
        w_con = _float(batch.column("sdd_w_con"))
        self._sum("sdd_w_con", w_con, ok)
        self._count("sdd_clean", sid, ok & _bool(batch.column("sdd_clean")))
        self._keep_sample("sdd_w_con", w_con, take)

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

    def _add_match(self, batch, ok, sid, take):
        prob = _float(batch.column("match_clean_prob"))
        self._sum("match_clean_prob", prob, ok)
        self._keep_sample("match_clean_prob", prob, take)

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
        rules=keep_rules(methods, meta),
        max_sample_rows=max_sample_rows,
        seed=seed,
    )
    total = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    tally = _Tally(data, min(1.0, max_sample_rows / total) if total else 1.0)
    columns = _columns_for(methods, data.rules)
    for f in files:
        try:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=BATCH_ROWS, columns=columns):
                tally.add(batch)
        except (OSError, pa.ArrowException) as exc:
            raise InputError(f"{f}: cannot read ({_first_line(exc)})") from None
    tally.finish()
    return data
