"""Options and helpers shared by several ``nclean`` commands.

Kept apart from :mod:`cleaner.cli` so that command modules never import the
app that registers them (no import cycle), and so the option texts live in
one place.
"""

from __future__ import annotations

import typer

from cleaner.errors import ConfigError
from cleaner.io.decode import DEFAULT_IMAGE_KEYS, SampleSpec

# Whether the console entry point shows tracebacks: set by each command's
# --debug, read by cli.main when an unexpected error reaches it.
DEBUG = {"on": False}


def set_debug(on: bool) -> None:
    DEBUG["on"] = bool(on)


# -- shared options ----------------------------------------------------------
ModelOpt = typer.Option(
    None,
    "--model",
    help="open_clip model name, or a path to a model config .json [default: the model named "
    "in the JSON beside a local --pretrained checkpoint (nclean demo, nclean train and the "
    'demo\'s pre-training write one; <checkpoint>.estimator.json {"model": ...} for your '
    "own), else ViT-B-32].",
)
PretrainedOpt = typer.Option(
    "openai",
    "--pretrained",
    help="open_clip pretrained tag (fetched from a hub: online only), a local .pt/.safetensors "
    "checkpoint (loaded with weights_only), or 'none' for random weights.",
)
DeviceOpt = typer.Option("auto", "--device", help="auto | cpu | cuda")
PrecisionOpt = typer.Option(
    "auto", "--precision", help="auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16 | fp16"
)
BatchOpt = typer.Option(
    None, "--batch-size", help="Images per forward pass [default: 1024 on CUDA, 128 on CPU]."
)
WorkersOpt = typer.Option(
    2,
    "--workers",
    help="Decoding processes (each reads whole shards). 0 = decode in the main process.",
)
ImageKeyOpt = typer.Option(
    ";".join(DEFAULT_IMAGE_KEYS),
    "--image-key",
    help="Image member extensions, first present wins (';'-separated).",
)
TextKeyOpt = typer.Option(
    "txt",
    "--text-key",
    help="Caption member extension, or json:<field> to read a field of the .json member.",
)
UidOpt = typer.Option(
    None, "--uid-field", help="Field of the .json member to record as uid (e.g. DataComp's 'uid')."
)
OverwriteOpt = typer.Option(False, "--overwrite", help="Redo everything instead of resuming.")
ProgressOpt = typer.Option(True, "--progress/--no-progress", help="Show progress bars on stderr.")
DebugOpt = typer.Option(False, "--debug", help="Show full tracebacks on internal errors.")


def _spec(
    image_key: str, text_key: str, uid_field: str | None, label_key: str | None = None
) -> SampleSpec:
    keys = tuple(k.strip().lower() for k in image_key.replace(",", ";").split(";") if k.strip())
    if not keys:
        raise ConfigError("--image-key needs at least one extension")
    if text_key.startswith("json:") and len(text_key) == 5:
        raise ConfigError("--text-key json:<field> needs a field name")
    return SampleSpec(image_keys=keys, text_key=text_key, uid_field=uid_field, label_key=label_key)


def _estimator(model, pretrained, device, precision):
    from cleaner.estimator.model import model_for
    from pipelines.embed_job import EstimatorSpec

    # resolved here, so the job's recorded identity names the model actually used
    model = model_for(model, pretrained)
    return EstimatorSpec(model=model, pretrained=pretrained, device=device, precision=precision)
