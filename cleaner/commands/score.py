"""``nclean score``: the main job, thin over :mod:`pipelines.score_job`.

The command's options come in help panels (input, estimator, methods, one
panel per method, neighbours and fit, output and run). The job-level ones are
listed here; each method's options come from its declaration in the method
registry (:mod:`cleaner.methods.catalog`), so a new method's options appear
without touching this file. The parsed values are gathered into the
settings objects the job takes (EstimatorSpec, SampleSpec, ScoreSettings).
"""

from __future__ import annotations

import copy
import inspect
import sys
from pathlib import Path

import typer
from typer.core import TyperCommand

from cleaner.commands import options as O
from cleaner.errors import ConfigError
from cleaner.methods import catalog

INPUT, ESTIMATOR, METHODS = "Input", "Estimator", "Methods"
FIT, OUTPUT = "Neighbours and fit", "Output and run"


def _in(panel: str, option):
    """A shared option object, shown in ``panel``."""
    option = copy.copy(option)
    option.rich_help_panel = panel
    return option


def _static_params() -> list[tuple[str, object, object]]:
    """(name, type, typer option) of the job-level options, panel by panel."""
    opt = typer.Option
    return [
        ("shards", list[str] | None, typer.Argument(None, help="Shards: a directory, a glob, a brace pattern (data-{000000..000099}.tar) or paths.")),
        ("embeddings", Path | None, opt(None, "--embeddings", help="Score precomputed embeddings (nclean embed or clip-retrieval layout) instead of shards.", rich_help_panel=INPUT)),
        ("image_key", str, _in(INPUT, O.ImageKeyOpt)),
        ("text_key", str, _in(INPUT, O.TextKeyOpt)),
        ("uid_field", str | None, _in(INPUT, O.UidOpt)),
        ("label_key", str | None, opt(None, "--label-key", help="CLIPCleaner: label member ('cls', an integer) or json:<field> [default: cls].", rich_help_panel=INPUT)),
        ("workers", int, _in(INPUT, O.WorkersOpt)),
        ("model", str, _in(ESTIMATOR, O.ModelOpt)),
        ("pretrained", str, _in(ESTIMATOR, O.PretrainedOpt)),
        ("device", str, _in(ESTIMATOR, O.DeviceOpt)),
        ("precision", str, _in(ESTIMATOR, O.PrecisionOpt)),
        ("batch_size", int | None, _in(ESTIMATOR, O.BatchOpt)),
        ("methods", str, opt(",".join(catalog.default_names()), "--methods", help=f"Comma-separated, from: {', '.join(catalog.all_names())}. " + " ".join(f"{m.name}: {m.summary}." for m in catalog.REGISTRY.values()), rich_help_panel=METHODS)),
        ("beta_source", str, opt("noise", "--beta-source", help="OSA beta from 'noise' (K noise images x K random token sequences; needs the model) or 'shuffled' (K real mismatched pairs).", rich_help_panel=METHODS)),
        ("beta_samples", int | None, opt(None, "--beta-samples", help="K for the beta estimate [default: 64 for noise, 10000 for shuffled].", rich_help_panel=METHODS)),
        ("beta", float | None, opt(None, "--beta", help="Set beta by hand (cosine units); skips estimation.", rich_help_panel=METHODS)),
        ("thresholds", str | None, opt(None, "--thresholds", show_default=False, help="auto (the default): OSA's keep cut, SDD's alpha/beta_c and SPS's eps2 mapped from the data's cosine calibrated against shuffled pairs, so they mean on any estimator what they mean on CLIP; paper: the published constants, to reproduce a paper (the default when --beta, --beta-samples, --beta-source, --sdd-alpha, --sdd-beta-c or --sps-eps2 is given). See docs/methods.md.", rich_help_panel=METHODS)),
        ("seed", int, opt(0, "--seed", help="Seed for every random choice (beta sampling, fit samples, batches).", rich_help_panel=METHODS)),
        ("fit_sample", int, opt(1_000_000, "--fit-sample", help="Rows used for global fits (GMMs); a seeded uniform sample when there are more.", rich_help_panel=FIT)),
        ("exact_threshold", int, opt(2048, "--exact-threshold", help="Nearest neighbours: exact search up to this many pool rows, inverted lists above (probing tuned to recall@1 >= 0.95, recall recorded).", rich_help_panel=FIT)),
        ("pool_size", int, opt(65_536, "--pool-size", help="Neighbour pools (SDD clean set, SPS reliable set): a seeded uniform sample of at most this many qualifying rows (by sample key; recorded in the metadata).", rich_help_panel=FIT)),
        ("out", Path, opt(..., "--out", "-o", help="Output folder of per-shard parts, or a .parquet file (parts go to <name>.parts/ and are merged).", rich_help_panel=OUTPUT)),
        ("cache", Path | None, opt(None, "--cache", help="Embedding cache folder [default: <out>/_nclean/embeddings].", rich_help_panel=OUTPUT)),
        ("engine", str, opt("local", "--engine", help="local (this machine) or ray (one task per shard on a Ray cluster).", rich_help_panel=OUTPUT)),
        ("ray_address", str | None, opt(None, "--ray-address", help="Ray cluster address [default: $RAY_ADDRESS, else start a local Ray].", rich_help_panel=OUTPUT)),
        ("overwrite", bool, _in(OUTPUT, O.OverwriteOpt)),
        ("progress", bool, _in(OUTPUT, O.ProgressOpt)),
        ("debug", bool, _in(OUTPUT, O.DebugOpt)),
    ]  # fmt: skip


def _method_params() -> list[tuple[str, object, object]]:
    """(name, type, typer option) of every registered method's options."""
    out = []
    for method in catalog.REGISTRY.values():
        for o in method.options:
            default = ",".join(o.default) if isinstance(o.default, tuple) else o.default
            kind = o.type if default is not None else o.type | None
            option = typer.Option(
                default, o.cli_flag, help=o.help, rich_help_panel=f"Method: {method.name}"
            )
            out.append((o.name, kind, option))
    return out


def score(ctx: typer.Context, **params) -> None:
    """Score samples and write sidecar parts (embedding them first when given shards).

    Resumable: rerun the same command after a kill and finished shards are
    kept. Exit codes: 0 ok (bad samples are status rows), 2 bad options, 3
    unreadable input, 4 nothing scorable, 5 some shards unreadable (named;
    rerun to retry), 1 internal error, 130 interrupted.

    Example: nclean score shards/ --out weights.parquet --model ViT-B-32 --pretrained ./vitb32.pt
    """
    O.set_debug(params["debug"])
    from pipelines.score_job import run_score

    job = _job(ctx, params)
    summary = run_score(job)
    _print_summary(summary)
    if summary.fatal_shards:
        raise typer.Exit(5)


def _given(ctx: typer.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


def _job(ctx: typer.Context, p: dict):
    """The ScoreJob the options describe (checked where the CLI alone can tell)."""
    from pipelines.score_job import ScoreJob, ScoreSettings

    try:
        methods = catalog.parse_methods(p["methods"])
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not p["shards"] and not p["embeddings"]:
        raise ConfigError("give shards to score, or --embeddings DIR")
    options = _method_options(ctx, p, methods)
    mapped = ("sdd_alpha", "sdd_beta_c", "sps_eps2")  # what --thresholds auto sets
    by_hand = [o for o in mapped if o in options and _given(ctx, o)]
    if p["thresholds"] is None:  # paper constants set by hand ask for paper mode
        paper = by_hand or any(_given(ctx, o) for o in ("beta", "beta_samples", "beta_source"))
        p["thresholds"] = "paper" if paper else "auto"
    elif p["thresholds"] == "auto" and by_hand:  # auto would silently replace them
        flags = " and ".join("--" + o.replace("_", "-") for o in by_hand)
        raise ConfigError(f"{flags}: set by hand, or mapped by --thresholds auto; give one of them")
    settings = ScoreSettings(
        methods=methods, beta_source=p["beta_source"], beta_samples=p["beta_samples"],
        beta=p["beta"], seed=p["seed"], fit_sample=p["fit_sample"],
        exact_threshold=p["exact_threshold"], pool_size=p["pool_size"], options=options, thresholds=p["thresholds"],
    )  # fmt: skip
    return ScoreJob(
        out=str(p["out"]),
        shards=list(p["shards"]) if p["shards"] else None,
        embeddings=str(p["embeddings"]) if p["embeddings"] else None,
        cache=str(p["cache"]) if p["cache"] else None,
        estimator=O._estimator(p["model"], p["pretrained"], p["device"], p["precision"]),
        sample_spec=O._spec(p["image_key"], p["text_key"], p["uid_field"], p["label_key"]),
        settings=settings, batch_size=p["batch_size"], workers=p["workers"],
        overwrite=p["overwrite"], progress=p["progress"], engine=p["engine"],
        ray_address=p["ray_address"], argv=sys.argv[1:],
        beta_source_explicit=_given(ctx, "beta_source"),
    )  # fmt: skip


def _method_options(ctx: typer.Context, p: dict, methods: list[str]) -> dict:
    """The selected methods' options, parsed; an option of a method that is
    not selected, given on the command line, is an error (it would do nothing)."""
    options = {}
    for method in catalog.REGISTRY.values():
        for o in method.options:
            if method.name in methods:
                options[o.name] = o.parse(p[o.name]) if o.parse else p[o.name]
            elif _given(ctx, o.name):
                raise ConfigError(f"{o.cli_flag} applies to --methods {method.name}")
    if p["label_key"] and not any(catalog.get(m).needs_labels for m in methods):
        raise ConfigError("--label-key applies to methods that read labels (clipcleaner)")
    return options


def _print_summary(summary) -> None:
    err = sys.stderr
    print(
        f"rows: {summary.rows}  (parts written {summary.parts_written}, reused {summary.parts_skipped})",
        file=err,
    )
    for status, n in summary.status_counts.items():
        print(f"  {status:16s} {n}", file=err)
    beta = summary.fit.get("beta", {})
    if beta:
        print(
            f"beta: {beta['value']:.4f} ({beta['source']}, K={beta['k']}, se {beta['se']:.5f})",
            file=err,
        )
    for stem, msg in summary.fatal_shards.items():
        print(f"unreadable shard {stem}: {msg}", file=err)
    print(f"parts: {summary.parts_dir}", file=err)
    if summary.merged:
        unchanged = "" if summary.merged_written else " (unchanged)"
        print(f"sidecar: {summary.merged}{unchanged}", file=err)
    from pipelines.score_report import verdict_lines

    for line in verdict_lines(summary):  # last: the verdict a user reads first
        print(line, file=err)


class PanelCommand(TyperCommand):
    """Plain-text help (the app shows no rich markup, so ``[default: ...]``
    in help texts stays literal) with the options grouped by their panel."""

    def format_options(self, ctx, formatter) -> None:
        groups: dict[str, list] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                panel = "Arguments"
            else:
                panel = getattr(param, "rich_help_panel", None) or "Options"
            groups.setdefault(panel, []).append(record)
        for panel, rows in groups.items():
            with formatter.section(panel):
                formatter.write_dl(rows)


def _signature() -> None:
    """Give ``score`` the options typer reads from its signature."""
    params = [
        inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)
    ]
    for name, kind, option in _static_params() + _method_params():
        params.append(
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind)
        )
    score.__signature__ = inspect.Signature(params)
    score.__annotations__ = {p.name: p.annotation for p in params}


_signature()
