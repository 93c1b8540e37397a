"""Load the frozen open_clip estimator the same way for users and for tests.

``--model`` is an open_clip model name (``ViT-B-32``) or a path to a model
config JSON (registered with ``open_clip.add_model_config``; nclean also
ships ``nclean-tiny`` for demos and tests). ``--pretrained`` is an open_clip
tag (``openai``: fetched from a hub, so online only), a local ``.pt`` /
``.safetensors`` / ``.bin`` checkpoint (loaded by open_clip with
``weights_only=True``), or ``none`` for random weights (demos only).

Without ``--model`` the model comes from a side file beside a local
checkpoint (what ``nclean demo``, the estimator pre-training and ``nclean
train`` leave there; :func:`cleaner.estimator.sidefile.checkpoint_model`),
else it is ``ViT-B-32`` (:func:`model_for`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from cleaner.errors import ConfigError
from cleaner.estimator.sidefile import checkpoint_model, file_digest

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
_registered = False

# The model when --model is not given and no side file names one.
DEFAULT_MODEL = "ViT-B-32"


def _register_builtin_configs() -> None:
    global _registered
    if not _registered:
        import open_clip

        open_clip.add_model_config(CONFIG_DIR)
        _registered = True


def resolve_model_name(model: str) -> str:
    """Return an open_clip model name, registering a config JSON if given one."""
    import open_clip

    _register_builtin_configs()
    if model.endswith(".json"):
        path = Path(model)
        if not path.is_file():
            raise ConfigError(f"model config not found: {model}")
        open_clip.add_model_config(path)
        return path.stem
    if model not in open_clip.list_models():
        raise ConfigError(
            f'unknown model {model!r}; use an open_clip model name (see `python -c "import open_clip; '
            f'print(open_clip.list_models())"`) or a path to a model config .json'
        )
    return model


def model_for(model: str | None, pretrained: str | None) -> str:
    """The ``--model`` to use: ``model`` when given, else the one a side file
    beside the ``pretrained`` checkpoint names, else :data:`DEFAULT_MODEL`."""
    if model:
        return model
    found = checkpoint_model(pretrained)
    if found is None:
        return DEFAULT_MODEL
    name, side = found
    try:
        resolve_model_name(name)
    except ConfigError:
        raise ConfigError(
            f"{side} names model {name!r}, which cannot be built here; pass --model"
        ) from None
    return name


def pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but CUDA is not available")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ConfigError(f"unknown device {device!r}: use auto, cpu or cuda")
    return device


def autocast_dtype(precision: str, device: str) -> torch.dtype | None:
    """None means plain fp32. ``auto``: bf16 autocast on CUDA, fp32 on CPU."""
    if precision == "auto":
        return torch.bfloat16 if device.startswith("cuda") else None
    table = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in table:
        raise ConfigError(f"unknown precision {precision!r}: use auto, fp32, bf16 or fp16")
    if precision == "fp16" and not device.startswith("cuda"):
        raise ConfigError("--precision fp16 needs CUDA; use bf16 or fp32 on CPU")
    return table[precision]


@dataclass
class Estimator:
    """A frozen dual encoder plus what it needs around it."""

    model: torch.nn.Module
    tokenizer: object
    pil_transform: object  # PIL -> PIL at the input size (resize + crop)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int
    context_length: int
    device: str
    dtype: torch.dtype | None
    model_name: str
    pretrained: str
    pretrained_digest: str | None
    embed_dim: int

    def describe(self) -> dict:
        return {
            "model": self.model_name,
            "pretrained": self.pretrained,
            "pretrained_digest": self.pretrained_digest,
            "image_size": self.image_size,
            "context_length": self.context_length,
            "embed_dim": self.embed_dim,
        }

    def _autocast(self):
        if self.dtype is None:
            return torch.autocast(device_type="cpu", enabled=False)
        return torch.autocast(device_type=self.device.split(":")[0], dtype=self.dtype)

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels: float (B, 3, H, W), already normalised. Returns L2-normalised fp32."""
        with self._autocast():
            emb = self.model.encode_image(pixels.to(self.device, non_blocking=True))
        return torch.nn.functional.normalize(emb.float(), dim=-1)

    @torch.inference_mode()
    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            emb = self.model.encode_text(tokens.to(self.device, non_blocking=True))
        return torch.nn.functional.normalize(emb.float(), dim=-1)

    def normalise_uint8(self, images: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> normalised (B, 3, H, W) float on the device.

        Done per batch on the device (not per image in decode workers) so
        workers ship 4x fewer bytes and the GPU does the arithmetic.
        """
        x = images.to(self.device, non_blocking=True).permute(0, 3, 1, 2)
        # one contiguous float copy, then in-place scale and shift: no
        # full-size temporaries (measured ~2.7x faster than (x - m) / s on CPU)
        x = x.contiguous(memory_format=torch.contiguous_format).float()
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return x.div_(255.0).sub_(mean).div_(std)


def _split_preprocess(preprocess):
    """open_clip's eval transform minus ToTensor/Normalize (done per batch)."""
    from torchvision import transforms as T

    pil_steps, mean, std = [], None, None
    for t in preprocess.transforms:
        name = type(t).__name__
        if name == "Normalize":
            mean, std = tuple(float(v) for v in t.mean), tuple(float(v) for v in t.std)
        elif "ToTensor" in name:
            continue
        else:
            pil_steps.append(t)
    if mean is None:
        raise ConfigError("the model's preprocessing has no Normalize step; cannot split it")
    return T.Compose(pil_steps), mean, std


def load_estimator(
    model: str | None, pretrained: str | None, device: str = "auto", precision: str = "auto"
) -> Estimator:
    """Create the open_clip model, load weights, freeze it. ``model=None``:
    the one the checkpoint's side file names, else ViT-B-32 (:func:`model_for`).

    Raises ConfigError with a one-line reason for an unknown model, a missing
    checkpoint, a checkpoint of another architecture, or hub weights that
    cannot be fetched offline.
    """
    name = resolve_model_name(model_for(model, pretrained))
    device = pick_device(device)
    dtype = autocast_dtype(precision, device)
    pretrained_arg, digest = _pretrained_source(pretrained)
    # open_clip logs a warning for random init; we say it ourselves once.
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))
    net, preprocess = _create_model(name, pretrained, pretrained_arg, digest)
    tokenizer = _tokenizer(name)
    net = net.to(device).eval().requires_grad_(False)
    pil_transform, mean, std = _split_preprocess(preprocess)
    image_size = net.visual.image_size
    image_size = int(image_size[0] if isinstance(image_size, (tuple, list)) else image_size)
    context_length = int(
        getattr(net, "context_length", None) or getattr(tokenizer, "context_length", 77)
    )
    with torch.inference_mode():
        embed_dim = int(
            net.encode_text(torch.zeros(1, context_length, dtype=torch.long, device=device)).shape[
                -1
            ]
        )
    return Estimator(
        embed_dim=embed_dim,
        model=net,
        tokenizer=tokenizer,
        pil_transform=pil_transform,
        mean=mean,
        std=std,
        image_size=image_size,
        context_length=context_length,
        device=device,
        dtype=dtype,
        model_name=name,
        pretrained=str(pretrained) if pretrained else "none",
        pretrained_digest=digest,
    )


def _pretrained_source(pretrained: str | None) -> tuple[str | None, str | None]:
    """What open_clip gets as ``pretrained`` (a file path or a hub tag; None for
    random weights), and the file's digest when it is a local checkpoint."""
    pretrained_arg, digest = None, None
    if pretrained and pretrained.lower() != "none":
        path = Path(pretrained)
        if path.suffix in (".pt", ".pth", ".bin", ".safetensors", ".ckpt") or "/" in pretrained:
            if not path.is_file():
                raise ConfigError(f"checkpoint not found: {pretrained}")
            digest = file_digest(path)
        pretrained_arg = str(path) if path.is_file() else pretrained
    return pretrained_arg, digest


_ARCH_HINT = "another architecture? pass the one it was trained as with --model"


def _create_model(name: str, pretrained: str | None, pretrained_arg: str | None, digest):
    """open_clip's model and eval transform, its errors turned into one-line ConfigErrors."""
    import open_clip

    try:
        net, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=pretrained_arg, device="cpu", weights_only=True
        )
    except RuntimeError as exc:
        msg = str(exc)
        if "state_dict" in msg or "size mismatch" in msg or "Missing key" in msg:
            missing = msg.count("Missing key") + msg.count("size mismatch")
            raise ConfigError(
                f"checkpoint {pretrained} does not fit model {name} ({_ARCH_HINT}): "
                f"{msg.splitlines()[0][:160]}{' ...' if missing else ''}"
            ) from None
        raise ConfigError(
            f"could not create model {name} with pretrained={pretrained}: {msg.splitlines()[0][:200]}"
        ) from None
    except Exception as exc:  # hub fetch offline, unknown tag, unreadable file
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        if digest is not None:
            raise ConfigError(
                f"checkpoint {pretrained} does not fit model {name} ({_ARCH_HINT}): "
                f"{type(exc).__name__}: {first}"
            ) from None
        hint = (
            " (weights are fetched from a hub; offline, pass a local checkpoint path)"
            if pretrained_arg and not Path(pretrained_arg).is_file()
            else ""
        )
        raise ConfigError(
            f"could not load pretrained={pretrained} for {name}: {type(exc).__name__}: {first}{hint}"
        ) from None
    return net, preprocess


def _tokenizer(name: str):
    import open_clip

    try:
        return open_clip.get_tokenizer(name)
    except Exception as exc:
        raise ConfigError(
            f"could not load the tokenizer of {name} (hub tokenizers need a network): {exc}"
        ) from None


def save_random_checkpoint(model: str, path: str | Path, seed: int = 0) -> Path:
    """Write a random-initialised checkpoint (demos and tests load it back
    through :func:`load_estimator`, the users' code path)."""
    import open_clip

    name = resolve_model_name(model)
    torch.manual_seed(seed)
    net = open_clip.create_model(name, pretrained=None)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from cleaner.io.atomic import atomic_path

    with atomic_path(path, suffix=path.suffix) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp))
        else:
            torch.save(net.state_dict(), tmp)
    return path
