"""``nclean report``: summarise a sidecar as an HTML page with figures, or as text."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from cleaner.errors import ConfigError
from cleaner.report import DEFAULT_PAIRS, MAX_PAIRS

FORMATS = ("html", "text")


ShardsOpt = typer.Option(
    None,
    "--shards",
    help="The shards that were scored (a folder, glob, brace pattern or path; repeat for "
    "more). html only: the page then shows, per method, thumbnails with captions and "
    "scores of kept and dropped pairs, the borderline ones, and pairs the methods "
    "disagree on, reading only those samples.",
)
PairsOpt = typer.Option(
    DEFAULT_PAIRS,
    "--pairs",
    help=f"With --shards: pairs shown per method and group (1 to {MAX_PAIRS}).",
)
SeedOpt = typer.Option(
    0, "--seed", help="Seed of the histogram sample and of the pairs chosen at random."
)


def default_out(sidecar: Path) -> Path:
    """``weights.parquet`` -> ``weights_report/`` next to it (``weights.parts/`` -> ``weights.parts_report/``)."""
    name = sidecar.name[: -len(".parquet")] if sidecar.name.endswith(".parquet") else sidecar.name
    return sidecar.parent / f"{name or 'sidecar'}_report"


def report_cmd(
    sidecar: Path = typer.Argument(
        ...,
        help="The sidecar: a .parquet file from nclean score, or a folder of its parts "
        "(<out>.parts/).",
    ),
    out: Path = typer.Option(
        None,
        "--out",
        "-o",
        help="html: folder for index.html, the PNG figures and shards.csv [default: "
        "<sidecar name>_report/ next to the sidecar]. text: file to write the report to "
        "[default: standard output].",
    ),
    format: str = typer.Option(
        "html",
        "--format",
        "-f",
        help="html (a self-contained page with figures; no network needed to view it) or "
        "text (aligned counts and key numbers for a terminal).",
    ),
    sample_rows: int = typer.Option(
        2_000_000,
        "--sample-rows",
        help="Histograms and quantiles use a seeded uniform sample of at most this many ok "
        "rows; counts, means and tables always cover every row.",
    ),
    shards: list[str] = ShardsOpt,
    pairs: int = PairsOpt,
    seed: int = SeedOpt,
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on internal errors."),
):
    """Summarise a sidecar: statuses, each method's verdicts, the run's metadata.

    Reads only the columns it needs, streaming, so it works on sidecars of any
    size. Shows per status and per shard counts; for OSA the cosine histogram
    with beta (and SDD's alpha / beta_c lines and fitted GMM when present) and
    the weights; for SDD the confidence weights; for SPS the loss histogram
    with its GMM and the partition counts; for CLIPCleaner the label quality
    of selected and rejected samples and the selection per class. The page also
    lists the nclean version, estimator, beta with its standard error, the
    settings and the neighbour indexes' recall@1. Only methods present in the
    sidecar get a section.

    With --shards, a "Pairs" section shows the samples themselves; a shard
    not among --shards, or changed since scoring, is a note on its cards.

    Exit codes: 0 ok, 2 bad option (also: --shards matches nothing, or none of
    the shards shown), 3 sidecar missing, unreadable or of an unknown schema
    version.

    Example: nclean report weights.parquet --shards shards/ --out weights_report/
    (then open index.html)
    """
    from cleaner.commands.options import set_debug

    set_debug(debug)  # the console entry point shows tracebacks only when asked
    _write_report(sidecar, out, format, sample_rows, shards or None, pairs, seed)


def _write_report(
    sidecar: Path,
    out: Path | None,
    format_option: str,
    sample_rows: int,
    shards: list[str] | None = None,
    pairs: int = DEFAULT_PAIRS,
    seed: int = 0,
) -> None:
    """Check the options, then write the report where ``out`` (or its default) says."""
    from cleaner.report.build import build_report, text_report

    fmt = format_option.strip().lower()
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be html or text, not {format_option!r}")
    if sample_rows < 1:
        raise ConfigError("--sample-rows must be at least 1")
    if not 1 <= pairs <= MAX_PAIRS:
        raise ConfigError(f"--pairs must be between 1 and {MAX_PAIRS}, not {pairs}")
    if fmt == "text":
        if shards:
            raise ConfigError("--shards shows pairs on the html page; it has no text form")
        text = text_report(sidecar, max_sample_rows=sample_rows, seed=seed)
        if out is None:
            sys.stdout.write(text)
        else:
            _write_text(out, text)
            print(f"report: {out}", file=sys.stderr)
        return
    index = build_report(
        sidecar,
        out if out is not None else default_out(sidecar),
        max_sample_rows=sample_rows,
        seed=seed,
        shards=shards,
        pairs=pairs,
    )
    print(f"report: {index}", file=sys.stderr)


def _write_text(path: Path, text: str) -> None:
    """Write atomically, so a reader never sees half a report."""
    if path.is_dir():
        raise ConfigError(f"--out {path} is a folder; give a file name for --format text")
    if not path.parent.exists():
        raise ConfigError(f"folder of --out does not exist: {path.parent}")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
