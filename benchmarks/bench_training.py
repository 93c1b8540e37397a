"""Training benchmark: do the verdicts pay off when a model is trained?

Shapes world, 50% of captions shuffled. The sidecar comes from the
pre-trained estimator (cleaner.estimator.pretrain). The same target model (the small
shapes config, random init, same seed, the same number of updates) is then
trained with ``nclean train`` under:

    none / osa / sdd / sps / top-30% CLIP-score filter / oracle (clean pairs only)
    / the same with ``--thresholds auto`` (osa: monotone weights, sdd: mapped
    alpha and beta_c) / match (``match_keep`` filter, ``match_clean_prob``
    weights)

and evaluated on a clean held-out test set: R@1 both ways and rSum. For
classification (main shape as the label, 50% symmetric label noise): CE on
all labels vs MixFix on CLIPCleaner selections vs oracle, accuracy on a
clean test set, a linear head on the estimator's frozen image tower.

    python bench_training.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# One torch thread: for these small models on 2 cores it is as fast or faster
# (measured under load: 2 threads spin-wait), and runs are steadier.
os.environ.setdefault("OMP_NUM_THREADS", "1")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from _common import md_table, write_section  # noqa: E402

from cleaner.estimator.pretrain import DEFAULT_MODEL, estimator_info, pretrained_estimator  # noqa: E402
from cleaner.io.sidecar import read_sidecar  # noqa: E402
from cleaner.methods import catalog  # noqa: E402
from cleaner.train.trainer import TrainConfig, train  # noqa: E402
from cleaner.train.weights import evaluate  # noqa: E402
from cleaner.worlds import shapes  # noqa: E402
from pipelines.embed_job import EstimatorSpec  # noqa: E402
from pipelines.score_job import ScoreJob, ScoreSettings, run_score  # noqa: E402

WORK = HERE / "_work" / "training"


def _sets(n_train: int, n_test: int):
    """Noisy caption train set, clean test set, noisy-label train set."""
    root = WORK / f"n{n_train}"
    if (root / ".done").exists():
        return root
    data = shapes.generate(n_train, seed=31)
    noisy, is_noisy = shapes.add_caption_noise(data, 0.5, seed=31)
    shapes.write_shards(noisy, root / "pairs_train", shard_size=1000)
    np.save(root / "pairs_noisy.npy", is_noisy)
    shapes.write_shards(shapes.generate(n_test, seed=32), root / "test", shard_size=1000)
    lab, flipped = shapes.add_label_noise(shapes.generate(n_train, seed=33), 0.5, seed=33)
    shapes.write_shards(lab, root / "labels_train", shard_size=1000)
    np.save(root / "labels_noisy.npy", flipped)
    (root / "classes.txt").write_text("\n".join(shapes.SHAPES) + "\n")
    (root / ".done").touch()
    return root


def _with_oracle(sidecar: Path, is_noisy: np.ndarray, out: Path) -> Path:
    """The sidecar plus a column ``oracle_clean`` (ground truth), so the
    oracle run goes through the same ``--method filter`` path."""
    table = pq.read_table(sidecar)
    # rows of a shapes set are in generation order (one shard after another)
    order = np.array([int(k.rsplit("_", 1)[1]) for k in table["key"].to_pylist()])
    table = table.append_column("oracle_clean", pa.array(~is_noisy[order]))
    pq.write_table(table, out)
    return out


def _kept_share(sidecar: Path, where: str, is_noisy: np.ndarray) -> dict:
    """Clean kept % / noise caught % of a keep rule over the sidecar's rows."""
    table = pq.read_table(sidecar)
    order = np.array([int(k.rsplit("_", 1)[1]) for k in table["key"].to_pylist()])
    noisy = is_noisy[order]
    keep = evaluate(table, where) & (np.asarray(table["status"].to_pylist(), dtype=object) == "ok")
    return {"where": where, "clean_kept": 100 * float(keep[~noisy].mean()),
            "caught": 100 * float((~keep[noisy]).mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sets and fewer epochs")
    args = ap.parse_args()
    started = time.time()
    load_start = os.getloadavg()
    n_train, n_test, epochs = (800, 300, 1) if args.quick else (5000, 1000, 6)
    ckpt = pretrained_estimator(HERE.parent / ".cache" / "nclean")
    info = estimator_info(ckpt)
    root = _sets(n_train, n_test)
    est = EstimatorSpec(model=DEFAULT_MODEL, pretrained=str(ckpt), device="cpu")

    # one scoring pass per train set and estimator (the sidecars are only
    # reused when the same checkpoint made them)
    sides = root / ckpt.stem
    sides.mkdir(exist_ok=True)
    pair_side = sides / "pairs.parquet"
    if not pair_side.exists():

        # SPS with the paper's eps1 = 0.99 leaves no reliable pair with this
        # estimator (its clean posterior tops out near 0.98; see the detection
        # benchmark), and SPS cannot train without reliable pairs: use the
        # released code's eps1 = 0.6 here, and say so in the results.
        run_score(ScoreJob(out=str(pair_side), shards=[str(root / "pairs_train")], estimator=est,
                           settings=ScoreSettings(methods=["osa", "sdd", "sps"], options={"sps_eps1": 0.6}),
                           workers=1, progress=False))
    # OSA with the other beta construction, from the same embeddings (no re-embedding)
    pair_side_shuffled = sides / "pairs_shuffled_beta.parquet"
    if not pair_side_shuffled.exists():
        run_score(ScoreJob(out=str(pair_side_shuffled), embeddings=str(sides / "pairs.parts" / "_nclean" / "embeddings"),
                           settings=ScoreSettings(methods=["osa"], beta_source="shuffled"), progress=False))
    # --thresholds auto and match, from the same embeddings: OSA's monotone
    # weights, SDD's mapped thresholds, match's calibrated verdict and probability
    pair_side_auto = sides / "pairs_auto.parquet"
    if not pair_side_auto.exists():
        run_score(ScoreJob(out=str(pair_side_auto), embeddings=str(sides / "pairs.parts" / "_nclean" / "embeddings"),
                           settings=ScoreSettings(methods=["osa", "sdd", "match"], thresholds="auto"),
                           progress=False))
    auto_meta = read_sidecar(pair_side_auto)[1]
    label_side = sides / "labels.parquet"
    if not label_side.exists():

        run_score(ScoreJob(out=str(label_side), shards=[str(root / "labels_train")], estimator=est,
                           settings=ScoreSettings(methods=["clipcleaner"],
                                                  options={"cc_classes": str(root / "classes.txt")}),
                           workers=1, progress=False))
    pair_oracle = _with_oracle(pair_side, np.load(root / "pairs_noisy.npy"), sides / "pairs_oracle.parquet")
    label_oracle = _with_oracle(label_side, np.load(root / "labels_noisy.npy"), sides / "labels_oracle.parquet")
    cos = pq.read_table(pair_side, columns=["cosine"])["cosine"].to_numpy(zero_copy_only=False)
    top30 = float(np.nanquantile(cos, 0.7))

    # the match runs first: they are what this benchmark was rerun for
    runs = {
        "none": {"method": "none"},
        "oracle (clean only)": {"method": "filter", "where": "oracle_clean", "sidecar": pair_oracle},
        "match (filter match_keep)": {"method": "filter", "where": "match_keep", "sidecar": pair_side_auto},
        "match (weights match_clean_prob)": {"method": "none", "weight": "match_clean_prob",
                                             "sidecar": pair_side_auto},
        "osa (auto: monotone)": {"method": "osa", "osa_form": "paper-norm", "sidecar": pair_side_auto},
        "sdd (auto)": {"method": "sdd", "sidecar": pair_side_auto},
        "sps": {"method": "sps"},
        "top-30% CLIP score": {"method": "filter", "where": f"cosine >= {top30!r}"},
        "osa": {"method": "osa", "osa_form": "paper-norm"},
        "osa (shuffled beta)": {"method": "osa", "osa_form": "paper-norm", "sidecar": pair_side_shuffled},
        "sdd": {"method": "sdd"},
    }
    auto_kept = {
        m: _kept_share(pair_side_auto, catalog.get(m).keep_where(auto_meta["params"][m]), np.load(root / "pairs_noisy.npy"))
        for m in ("osa", "sdd", "match")
    }
    # Equal compute (DataComp's fixed samples-seen): every run makes the
    # updates the unfiltered set gets in `epochs` epochs; a filtered set
    # repeats its rows. (Equal epochs would hand the full set twice the
    # updates of a 50% subset and confound cleaning with training length.)
    budget = epochs * (n_train // 128)
    rows, results = [], {}
    # equal updates here too: what CE on all labels gets in its epochs
    # (the classifier's last batch of an epoch may be partial)
    cls_epochs = 3 if args.quick else 10
    cls_budget = cls_epochs * -(-n_train // 128)
    cls_rows, cls_results = [], {}
    cls_runs = {
        "CE on all labels": {"method": "none"},
        "MixFix on CLIPCleaner selections": {"method": "mixfix"},
        "oracle (clean labels only)": {"method": "filter", "where": "oracle_clean", "sidecar": label_oracle},
    }

    def report(pending: list[str]) -> None:
        """Write the section with the runs done so far (rewritten after every run,
        so a run cut short still leaves its figures, marked as partial)."""
        r1 = {k: (v["i2t_R@1"] + v["t2i_R@1"]) / 2 for k, v in results.items()}
        none_r1, oracle_r1 = r1.get("none", float("nan")), r1.get("oracle (clean only)", float("nan"))
        cleaned = {k: v for k, v in r1.items() if k not in ("none", "oracle (clean only)")}
        best = max(cleaned, key=cleaned.get) if cleaned else None
        gap_oracle = oracle_r1 - cleaned[best] if best else float("nan")
        gain_none = cleaned[best] - none_r1 if best else float("nan")
        match_lines = []
        for name in ("match (filter match_keep)", "match (weights match_clean_prob)"):
            if name not in cleaned:
                match_lines.append(f"- {name}: not run yet")
                continue
            gap = oracle_r1 - cleaned[name]
            match_lines.append(
                f"- {name}: mean R@1 {cleaned[name]:.2f} vs oracle {oracle_r1:.2f}: gap {gap:.2f} points "
                f"(target <= 1: {'**met**' if gap <= 1 else f'**missed by {gap - 1:.2f} points**'})"
            )
        kept_lines = [
            f"- {m}: `{k['where']}` keeps {k['clean_kept']:.2f}% of the clean and catches {k['caught']:.2f}% "
            f"of the noisy training pairs"
            for m, k in auto_kept.items()
        ]
        osa_p = auto_meta["params"]["osa"]
        sdd_p = auto_meta["params"]["sdd"]
        load_end = os.getloadavg()
        held = info["heldout"]
        body = (
            f"Target model: `{DEFAULT_MODEL}` from random init, batch 128, AdamW lr 2e-3 (weight decay 0.1, none on "
            f"gains, biases and the temperature), on {n_train} shapes-world pairs with 50% of captions shuffled; "
            f"test: {n_test} clean held-out pairs. **Equal compute:** every run makes {budget} updates, what the "
            f"unfiltered set gets in {epochs} epochs (`nclean train --steps {budget}`); a filtered set runs as many "
            "epochs as that takes, as DataComp fixes the samples seen rather than the epochs. "
            f"Sidecar from the pre-trained estimator `{ckpt.name}` (its own held-out R@1: i2t "
            f"{held['i2t_R@1']:.1f}%, t2i {held['t2i_R@1']:.1f}%). The top-30% filter keeps cosine >= {top30:.4f}. "
            "SPS is scored with the released code's eps1 = 0.6 (the paper's 0.99 leaves no reliable pair with this "
            "estimator). "
            + (f"**Partial: the run was still going when this was written; not run yet: {', '.join(pending)}.** "
               if pending else "")
            + ("**Quick mode: the training budget is far too small for the target model to learn; these figures only "
               "show that every method runs.** " if args.quick else "")
            + "\n\n"
            + md_table(["run", "train rows", "epochs", "steps", "i2t R@1 %", "t2i R@1 %", "rSum", "seconds"], rows)
            + "\nMatch runs (issue 15: R@1 within 1 point of the oracle clean-subset run at 50% noise):\n\n"
            + "\n".join(match_lines)
            + "\n\nVerdicts of the `--thresholds auto` sidecar on these training pairs (each method's own keep rule, "
            "`keep_expr` from the registry, filled from the sidecar's fitted params; "
            f"OSA form `{osa_p.get('form')}`, beta {osa_p['beta']['value']:.4f}; SDD alpha "
            f"{sdd_p.get('alpha', float('nan')):.2f}, beta_c {sdd_p.get('beta_c', float('nan')):.2f}):\n\n"
            + "\n".join(kept_lines)
            + f"\n\nLoad average (1/5/15 min) at the start {load_start[0]:.2f} / {load_start[1]:.2f} / "
            f"{load_start[2]:.2f}, at the end {load_end[0]:.2f} / {load_end[1]:.2f} / {load_end[2]:.2f} "
            "(2 cores shared with other jobs: the seconds column is not a quiet-machine figure).\n"
            + (f"\nBest cleaned run: **{best}**, mean R@1 {cleaned[best]:.2f} vs oracle {oracle_r1:.2f} "
               f"(gap {gap_oracle:.2f} points; target <= 2: {'met' if gap_oracle <= 2 else 'missed'}) and vs none "
               f"{none_r1:.2f} (gain {gain_none:.2f} points; target >= 10: {'met' if gain_none >= 10 else 'missed'}).\n\n"
               if best else "\n")
            + "Classification (main shape, 8 classes, 50% symmetric label noise; linear head on the estimator's "
            f"frozen image tower, mixup, class-balanced sampling; every run makes {cls_budget} updates, what CE on "
            f"all labels gets in {cls_epochs} epochs):\n\n"
            + md_table(["run", "train rows (last epoch)", "epochs", "steps", "test accuracy %"], cls_rows)
        )
        cmd = "python benchmarks/bench_training.py" + (" --quick" if args.quick else "")
        path = write_section("training", "Training with the verdicts (shapes world, 50% noise)", body, started, cmd)
        print(f"wrote {path}", flush=True)

    todo = [*runs, *cls_runs]
    for name, extra in runs.items():
        t0 = time.time()
        cfg = TrainConfig(
            shards=[str(root / "pairs_train")], out=str(WORK / "runs" / name.replace(" ", "_")),
            sidecar=str(extra.pop("sidecar", pair_side)), eval_shards=[str(root / "test")],
            model=DEFAULT_MODEL, pretrained=None, device="cpu", steps=budget, batch_size=128, lr=2e-3,
            weight_decay=0.1, warmup_steps=10, seed=0, progress=False, **extra,
        )
        hist = train(cfg)
        last = hist[-1]
        results[name] = last
        rows.append([name, last["train_rows"], len(hist), last["steps"], round(last["i2t_R@1"], 2),
                     round(last["t2i_R@1"], 2), round(last["rsum"], 1), round(time.time() - t0)])
        print(name, rows[-1], flush=True)
        todo.remove(name)
        if "oracle (clean only)" in results:
            report(todo)

    for name, extra in cls_runs.items():
        cfg = TrainConfig(
            shards=[str(root / "labels_train")], out=str(WORK / "runs" / ("cls_" + name.split()[0])), task="classify",
            sidecar=str(extra.pop("sidecar", label_side)), classes=str(root / "classes.txt"),
            eval_shards=[str(root / "test")], model=DEFAULT_MODEL, pretrained=str(ckpt), device="cpu",
            steps=cls_budget, batch_size=128, lr=1e-2, seed=0, progress=False, **extra,
        )
        hist = train(cfg)
        last = hist[-1]
        cls_results[name] = last
        cls_rows.append([name, last["train_rows"], len(hist), last["steps"], round(last["accuracy"], 2)])
        print(name, cls_rows[-1], flush=True)
        todo.remove(name)
        report(todo)

if __name__ == "__main__":
    main()
