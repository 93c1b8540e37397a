"""``nclean filter``: keep (and optionally upsample) samples by their sidecar verdicts.

The command line only: the options, turning them into a
:class:`pipelines.filter_job.FilterJob`, and printing its summary. The job
itself lives in :mod:`pipelines.filter_job`, so it runs without typer too.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from cleaner.commands.options import DebugOpt, ProgressOpt, set_debug
from cleaner.errors import ConfigError

# The options, kept out of the signature so the command reads on one screen.
ShardsArg = typer.Argument(
    ...,
    help="Input shards: a directory (all *.tar), a glob, a brace pattern "
    "(data-{000000..000099}.tar) or paths.",
)
WeightsOpt = typer.Option(
    ...,
    "--weights",
    "-w",
    help="Sidecar of these shards: a .parquet file or a folder of parts. Repeat for "
    "sidecars of different shards.",
)
WhereOpt = typer.Option(
    None,
    "--where",
    help="Keep samples for which this expression over sidecar columns is true, e.g. "
    '"sdd_keep and osa_weight > 0" or "sps_partition == \'reliable\'". Allowed: column '
    "names, numbers, 'strings', True/False, == != < <= > >=, and/or/not, + - * / **, "
    "parentheses. A comparison with a null is never true. [default: keep every sample "
    "that was scored]",
)
OutOpt = typer.Option(
    None,
    "--out",
    "-o",
    help="Output folder for the kept samples: {i:06d}.tar shards (members copied byte "
    "for byte, keys kept) with {i:06d}_stats.json each, and stats.json with the totals "
    "(written last).",
)
MaxcountOpt = typer.Option(10_000, "--maxcount", help="Samples per output shard at most.")
UpsampleOpt = typer.Option(
    None,
    "--upsample",
    help="Repeat kept samples in proportion to this column or expression (e.g. "
    "osa_weight_norm), DataComp style: a sample gets w/mean(w) copies in expectation "
    "(mean over kept samples), rounded to whole copies by seeded systematic rounding, so "
    "the total stays the number of kept samples. Extra copies get keys <key>_dup1, "
    "<key>_dup2, ...; a sample rounded to 0 copies is dropped.",
)
KeepListOpt = typer.Option(
    None,
    "--keep-list",
    help="Also write a DataComp subset file (.npy): the kept samples' uids (32 hex "
    "digits, from the sidecar's uid column) as a sorted numpy array of dtype 'u8,u8', "
    "each uid once per copy, for DataComp's resharder.py. Works without --out.",
)
OnMissingOpt = typer.Option(
    "error",
    "--on-missing",
    help="A sample with no row in the sidecar: 'error' (default; says how many and in "
    "which shards, before writing anything) or 'drop'.",
)
KeepFailedOpt = typer.Option(
    False,
    "--keep-failed",
    help="Let --where decide for samples that could not be scored (status other than ok). "
    "By default they are dropped, with their status as the reason.",
)
SeedOpt = typer.Option(0, "--seed", help="Seed for the --upsample rounding.")
OverwriteOpt = typer.Option(
    False, "--overwrite", help="Replace the output of an earlier run in --out."
)


def filter_cmd(
    shards: list[str] = ShardsArg,
    weights: list[Path] = WeightsOpt,
    where: str = WhereOpt,
    out: Path = OutOpt,
    maxcount: int = MaxcountOpt,
    upsample: str = UpsampleOpt,
    keep_list: Path = KeepListOpt,
    on_missing: str = OnMissingOpt,
    keep_failed: bool = KeepFailedOpt,
    seed: int = SeedOpt,
    overwrite: bool = OverwriteOpt,
    progress: bool = ProgressOpt,
    debug: bool = DebugOpt,
):
    """Reshard the samples a sidecar keeps, optionally upsampled, and/or write a DataComp subset file.

    Reads the shards twice: once for headers only, to join every sample to the
    sidecar -- by (shard, key), or by key (or uid) for a sidecar scored from
    clip-retrieval embeddings, as its metadata says -- so a sidecar that does
    not match, or a filter that keeps nothing, is an error with counts before
    anything is written; and once to copy the kept samples.
    Dropped samples are counted by reason in the stats: their status
    (decode_error, ...), where, upsample_zero, no_sidecar_row, truncated_member.

    Example: nclean filter shards/ --weights weights.parquet --where "sdd_keep" --out clean/
    """
    set_debug(debug)  # the console entry point shows tracebacks only when asked
    from pipelines.filter_job import FilterJob, run_filter

    if on_missing not in ("error", "drop"):
        raise ConfigError("--on-missing must be error or drop")
    summary = run_filter(
        FilterJob(
            shards=list(shards),
            weights=[str(w) for w in weights],
            out=str(out) if out else None,
            where=where,
            upsample=upsample,
            keep_list=str(keep_list) if keep_list else None,
            maxcount=maxcount,
            on_missing=on_missing,
            keep_failed=keep_failed,
            seed=seed,
            overwrite=overwrite,
            progress=progress,
            argv=sys.argv[1:],
        )
    )
    _print_summary(summary, keep_list)
    if summary.unreadable_shards:
        raise typer.Exit(5)


def _print_summary(summary, keep_list: Path | None) -> None:
    err = sys.stderr
    print(
        f"samples: {summary.input_samples} in {summary.input_shards} shards; kept {summary.kept}, "
        f"written {summary.written}, dropped {summary.dropped}",
        file=err,
    )
    for reason, n in summary.reasons.items():
        print(f"  {reason:18s} {n}", file=err)
    if summary.input_samples and not summary.written:  # every kept sample was cut off
        print("warning: nothing was written", file=err)
    if summary.sidecar_rows_without_sample:
        print(
            f"sidecar rows with no sample in the shards: {summary.sidecar_rows_without_sample}",
            file=err,
        )
    if summary.stats_path:
        print(f"output: {len(summary.output_shards)} shards; stats: {summary.stats_path}", file=err)
    if summary.keep_list_rows is not None:
        print(f"keep list: {keep_list} ({summary.keep_list_rows} uids)", file=err)
    for name, msg in summary.unreadable_shards.items():
        print(f"unreadable shard {name}: {msg}", file=err)
