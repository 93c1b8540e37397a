"""CLIPCleaner's declaration: label columns, options, and the fit on a
stratified sample of labelled rows with the prompts encoded by the estimator.

The out-of-fold table the fit produces is per row, too big for fit.json: it
is kept as an array file in the job's state folder through the context
(``ctx.save_arrays``), and checked by digest when the scorer is restored.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from cleaner.methods.registry import FitContext, Method, Option


def _csv(text) -> tuple[str, ...]:
    if isinstance(text, (list, tuple)):
        return tuple(text)
    return tuple(x.strip() for x in str(text).split(",") if x.strip())


def _path_or_none(value):
    return str(value) if value else None


class CLIPCleaner(Method):
    name = "clipcleaner"
    needs_labels = True
    needs_text = False
    summary = "label-noise selection for classification shards (needs --classes)"
    fields = (
        pa.field("label", pa.int64()),
        *[
            pa.field(f"cc_{name}_{est}", typ)
            for est in ("zs", "ind")
            for name, typ in (
                ("pred", pa.int64()),
                ("p_label", pa.float32()),
                ("consistency", pa.bool_()),
                ("gmm_clean_prob", pa.float32()),
            )
        ],
        pa.field("cc_selected", pa.bool_(), nullable=False),
        pa.field("cc_label_quality", pa.float32()),
    )
    fill_for_failed = {"cc_selected": False}
    keep_expr = "cc_selected"
    preload = ("sklearn.linear_model", "sklearn.mixture")
    options = (
        Option(
            "cc_classes",
            None,
            "CLIPCleaner: class names, one per line (line number = label id), or a JSON list.",
            flag="--classes",
            type=str,
            parse=_path_or_none,
        ),
        Option(
            "cc_prompts",
            None,
            "CLIPCleaner: JSON mapping class name -> list of prompts "
            "[default: built-in CLIP templates].",
            flag="--prompts",
            type=str,
            parse=_path_or_none,
        ),
        Option(
            "cc_prompt_aggregate",
            "sum",
            "CLIPCleaner: combine a class's prompts by 'sum' (released code) or 'mean'.",
            flag="--prompt-aggregate",
            type=str,
        ),
        Option(
            "cc_induced",
            "oof",
            "CLIPCleaner induced classifier: 'oof' (out-of-fold) or 'in-sample' (released code).",
            flag="--induced",
            type=str,
        ),
        Option(
            "cc_folds",
            5,
            "CLIPCleaner: folds for out-of-fold predictions.",
            flag="--folds",
            type=int,
        ),
        Option(
            "cc_theta_cons",
            0.8,
            "CLIPCleaner consistency threshold p(y|x)/max_k p(k|x).",
            flag="--theta-cons",
        ),
        Option(
            "cc_theta_gmm",
            0.5,
            "CLIPCleaner per-class GMM clean-posterior threshold.",
            flag="--theta-gmm",
        ),
        Option(
            "cc_estimators",
            ("zs", "ind"),
            "CLIPCleaner estimators that vote: zs, ind.",
            type=str,
            parse=_csv,
        ),
        Option(
            "cc_selectors",
            ("consistency", "gmm"),
            "CLIPCleaner selectors: consistency, gmm.",
            type=str,
            parse=_csv,
        ),
        Option(
            "cc_combine",
            "intersection",
            "CLIPCleaner: 'intersection' (conservative) or 'union' of the verdicts.",
            type=str,
        ),
        Option(
            "cc_fit_sample",
            200_000,
            "CLIPCleaner: labelled rows to fit on (stratified sample above).",
            type=int,
        ),
    )

    def check_options(self, options: dict) -> None:
        try:
            self._scorer(options, n_classes=2, seed=0, max_fit=None)
        except ValueError as exc:
            raise ValueError(f"CLIPCleaner option: {exc}") from None

    def n_classes(self, options: dict) -> int:
        return len(load_class_names(options))

    def _scorer(self, options: dict, n_classes: int, seed: int, max_fit):
        from cleaner.methods.clipcleaner.scorer import CLIPCleanerScorer

        return CLIPCleanerScorer(
            n_classes,
            theta_cons=options["cc_theta_cons"],
            theta_gmm=options["cc_theta_gmm"],
            prompt_aggregate=options["cc_prompt_aggregate"],
            induced=options["cc_induced"],
            n_folds=options["cc_folds"],
            estimators=list(options["cc_estimators"]),
            selectors=list(options["cc_selectors"]),
            combine=options["cc_combine"],
            max_fit_samples=max_fit,
            seed=seed,
        )

    def fit(self, scorer, ctx: FitContext) -> dict:
        from cleaner.methods.base import Pairs

        opts = ctx.options
        classes = load_class_names(opts)
        texts, class_of_prompt = prompt_texts(opts, classes)
        image, labels, row_ids = _labelled_sample(ctx, opts["cc_fit_sample"])
        if len(image) < 2:
            raise ValueError("CLIPCleaner needs at least two samples with a valid label")
        prompt_emb = ctx.encode_texts(texts)
        max_fit = opts["cc_fit_sample"] if len(image) > opts["cc_fit_sample"] else None
        cc = self._scorer(opts, len(classes), ctx.seed, max_fit)
        cc.fit(Pairs(image, image, labels=labels, row_ids=row_ids), prompt_emb, class_of_prompt)
        params = cc.get_params()
        params["classes"] = classes
        params["n_prompts"] = len(texts)
        if cc.oof_ is not None:
            record = ctx.save_arrays("clipcleaner_oof", cc.oof_)
            params["oof_file"], params["oof_sha1"] = record["file"], record["sha1"]
        return params

    def restore(self, params: dict, ctx: FitContext | None = None):
        from cleaner.methods.clipcleaner.scorer import CLIPCleanerScorer

        oof = None
        if params.get("oof_file"):
            oof = ctx.load_arrays({"file": params["oof_file"], "sha1": params["oof_sha1"]})
        drop = ("classes", "n_prompts", "oof_file", "oof_sha1")
        core = {k: v for k, v in params.items() if k not in drop}
        return CLIPCleanerScorer.from_params(core, oof=oof)

    def transform(self, scorer, pairs, pools: dict, seed_key: str) -> dict[str, np.ndarray]:
        cc = scorer.transform(pairs)
        for name in ("cc_pred_zs", "cc_pred_ind"):  # -1 means "estimator not used": null
            v = np.asarray(cc[name]).astype(object)
            v[np.asarray(cc[name]) < 0] = None
            cc[name] = v
        return cc

    def metadata(self, params: dict) -> dict:
        return slim_params(params)


def _labelled_sample(ctx: FitContext, fit_sample: int):
    """About ``fit_sample`` labelled rows (1.2x, cut to size by a stratified
    draw inside the scorer), shard by shard."""
    from cleaner.methods.sampling import sample_mask

    total = int(sum(ctx.ok_counts))
    rate = 1.0 if total <= fit_sample else min(1.0, 1.2 * fit_sample / total)
    images, labels, row_ids = [], [], []
    for stem, view in ctx.iter_views("fit clipcleaner"):
        take = sample_mask(len(view.pairs), rate, ctx.seed, "cc:" + stem)
        images.append(view.pairs.image[take])
        labels.append(view.pairs.labels[take])
        row_ids.append(view.pairs.row_ids[take])
    return np.concatenate(images), np.concatenate(labels), np.concatenate(row_ids)


def load_class_names(options: dict) -> list[str]:
    from cleaner.errors import ConfigError
    from cleaner.estimator.prompts import load_classes

    if not options.get("cc_classes"):
        raise ConfigError(
            "CLIPCleaner needs --classes FILE (class names, one per line; line number = label id)"
        )
    try:
        return load_classes(options["cc_classes"])
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--classes {options['cc_classes']}: {exc}") from None


def prompt_texts(options: dict, classes: list[str]) -> tuple[list[str], np.ndarray]:
    from cleaner.errors import ConfigError
    from cleaner.estimator.prompts import build_prompts, load_prompts

    path = options.get("cc_prompts")
    try:
        prompts = load_prompts(path, classes) if path else None
        return build_prompts(classes, prompts)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--prompts {path}: {exc}") from None


def slim_params(cc: dict) -> dict:
    """Fitted params for part metadata, minus the bulky arrays (prompt
    embeddings, regression coefficients: up to megabytes for many classes,
    in every part). fit.json keeps them; a digest stands in."""
    import hashlib
    import json

    def digest(value) -> dict:
        return {
            "sha1": hashlib.sha1(json.dumps(value, sort_keys=True).encode()).hexdigest(),
            "in": "_nclean/fit.json",
        }

    slim = dict(cc)
    if cc.get("prompts"):
        slim["prompts"] = {
            "class_of_prompt": cc["prompts"]["class_of_prompt"],
            "embeddings": digest(cc["prompts"]["embeddings"]),
        }
    if cc.get("lr"):
        slim["lr"] = digest(cc["lr"])
    return slim
