"""``nclean demo``: the offline end-to-end run on generated data."""

from __future__ import annotations

from pathlib import Path

import typer

from cleaner.commands.options import DebugOpt, ProgressOpt, set_debug


def demo(
    out: Path = typer.Option(
        Path("demo_out"), "--out", "-o", help="Folder for the generated shards and the sidecar."
    ),
    samples: int = typer.Option(600, "--samples", help="Samples to generate."),
    noise: float = typer.Option(
        0.4,
        "--noise",
        help="Fraction of captions shuffled, in [0, 1); a rerun with other --samples/--noise regenerates the data.",
    ),
    random_estimator: bool = typer.Option(
        False,
        "--random-estimator",
        help="Skip pre-training: score with random weights (verdicts at chance).",
    ),
    cache_dir: Path = typer.Option(
        None,
        "--cache-dir",
        help="Where the pre-trained demo estimator is cached [default: $NCLEAN_CACHE or ~/.cache/nclean].",
    ),
    progress: bool = ProgressOpt,
    debug: bool = DebugOpt,
):
    """Offline end to end: generate a noisy shapes-world dataset (with a few
    corrupt samples), pre-train a small estimator on clean pairs (cached;
    about two minutes of one CPU core the first time), score with OSA, SDD,
    SPS and match (--thresholds auto), print clean kept / noise caught per
    method and write the report page."""
    set_debug(debug)
    from cleaner.worlds.demo import run_demo

    run_demo(
        out,
        samples=samples,
        noise=noise,
        progress=progress,
        random_estimator=random_estimator,
        cache_dir=cache_dir,
    )
