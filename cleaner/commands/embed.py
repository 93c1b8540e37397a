"""``nclean embed``: embeddings only, in clip-retrieval's layout.

The command line only (options, printing the report); the resumable work is
:func:`pipelines.embed_job.run_embed`, shared with ``nclean score``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from cleaner.commands.options import (
    BatchOpt,
    DebugOpt,
    DeviceOpt,
    ImageKeyOpt,
    ModelOpt,
    OverwriteOpt,
    PrecisionOpt,
    PretrainedOpt,
    ProgressOpt,
    TextKeyOpt,
    UidOpt,
    WorkersOpt,
    _estimator,
    _spec,
    set_debug,
)

# The options only this command has, kept out of the signature so it reads on one screen.
ShardsArg = typer.Argument(..., help="Shards: a directory, a glob, a brace pattern or paths.")
OutOpt = typer.Option(
    ...,
    "--out",
    "-o",
    help="Embedding folder (img_emb/, text_emb/, metadata/ as clip-retrieval writes them).",
)
EngineOpt = typer.Option(
    "local", "--engine", help="local, or ray (an actor pool, one shard per call)."
)
RayAddressOpt = typer.Option(
    None, "--ray-address", help="Ray cluster address [default: $RAY_ADDRESS, else a local Ray]."
)


def embed(
    shards: list[str] = ShardsArg,
    out: Path = OutOpt,
    model: str = ModelOpt,
    pretrained: str = PretrainedOpt,
    device: str = DeviceOpt,
    precision: str = PrecisionOpt,
    batch_size: int = BatchOpt,
    workers: int = WorkersOpt,
    image_key: str = ImageKeyOpt,
    text_key: str = TextKeyOpt,
    uid_field: str = UidOpt,
    engine: str = EngineOpt,
    ray_address: str = RayAddressOpt,
    overwrite: bool = OverwriteOpt,
    progress: bool = ProgressOpt,
    debug: bool = DebugOpt,
):
    """Embed shards into a clip-retrieval compatible folder (resumable), for
    later `nclean score --embeddings`.

    Example: nclean embed 'data-{000000..000099}.tar' --out emb/ --pretrained ./vitb32.pt
    """
    set_debug(debug)
    from cleaner.io.embcache import EmbeddingCache
    from cleaner.io.shards import expand_shards
    from pipelines.embed_job import run_embed

    paths = expand_shards(shards)
    out.mkdir(parents=True, exist_ok=True)
    report = run_embed(
        paths,
        EmbeddingCache(out),
        _estimator(model, pretrained, device, precision),
        _spec(image_key, text_key, uid_field),
        batch_size,
        workers,
        overwrite=overwrite,
        progress=progress,
        engine=engine,
        ray_address=ray_address,
    )
    print(
        f"embedded {len(report.embedded)} shards ({report.samples} samples), reused {len(report.skipped)}; folder: {out}",
        file=sys.stderr,
    )
    for stem, msg in report.fatal.items():
        print(f"unreadable shard {stem}: {msg}", file=sys.stderr)
    if report.fatal:
        raise typer.Exit(5)
