"""Measures driver: data-driven statistics of a training run's numbered checkpoints.

Reads ``config.source`` (a ``launch/train.py`` workdir), restores checkpoint(s) of every seed,
and evaluates one metric (``irmx.measures``) on a fixed random sample of points, batch by batch,
all learners (and checkpoints) in one vmapped program. Each batch is written as JSON in the
seed's layout; a re-run skips the batches already written.
"""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from irmx import config_checks as cc
from irmx import measures, rng
from irmx.data import images as images_lib
from irmx.experiments import classify
from irmx.io import checkpoints
from irmx.io import workdir as wd

SPLITS = ("train", "val", "test")


def source_config(config) -> ml_collections.ConfigDict:
    path = os.path.join(os.path.expanduser(config.source), "config.json")
    if not config.source or not os.path.exists(path):
        cc.fail("source", config.source, "a finished launch/train.py workdir (with config.json)")
    return ml_collections.ConfigDict(wd.read_json(path)["config"])


def validate(config, train_config=None) -> None:
    cc.choice(config, "metric", measures.METRICS)
    cc.choice(config, "normalization", measures.NORMALIZATIONS)
    if config.mode:
        cc.choice(config, "mode", measures.MODES)
    cc.choice(config, "target_logit_only", (True, False))
    cc.choice(config, "dataset_split", SPLITS)
    cc.number(config, "num_samples", 1, integer=True)
    cc.number(config, "batch_size", 1, integer=True)
    if config.num_samples % config.batch_size:
        cc.fail("batch_size", config.batch_size,
                f"a divisor of config.num_samples={config.num_samples}")
    cc.number(config, "skip", 0, config.num_samples - 1, integer=True)
    if config.skip % config.batch_size:
        cc.fail("skip", config.skip, f"a multiple of config.batch_size={config.batch_size}")
    cc.number(config, "mc_sample_seed", 0, 2**32 - 1, integer=True)
    cc.number(config, "tol", 0.0)
    cc.number(config, "atol", 0.0)
    if config.tol == 0 and config.atol == 0:
        cc.fail("tol", config.tol, "a positive relative tolerance, or a positive config.atol")
    if config.target_logit_only and config.normalization == "crossentropy":
        cc.fail("target_logit_only", True, "False with config.normalization='crossentropy'")
    cc.number(config, "max_iters", 1, integer=True)
    cc.number(config, "num_probes", 1, integer=True)
    if train_config is not None:
        n_ckpt = len(train_config.checkpoint_epochs)
        cc.number(config, "checkpoint", -1, n_ckpt - 1, integer=True)
        available = {"train": train_config.data.train_split, "val": train_config.data.val_split}
        if config.dataset_split in available and config.num_samples > available[
                config.dataset_split]:
            cc.fail("num_samples", config.num_samples,
                    f"at most the {available[config.dataset_split]} points of the "
                    f"{config.dataset_split} split")


def setting_name(train_config) -> str:
    """The seed's TRAINING_SETTING folder: augmentation and label noise."""
    aug = "augmentation" if train_config.data.augmentation else "no-augmentation"
    return f"{aug}_noise-{train_config.data.label_noise:g}"


def batch_path(workdir, config, train_config, seed: int, ckpt: int, batch_id: int) -> str:
    """<root>/<name>/<model>/<data>/<setting>/seed-<seed>/<out>-<batch_id>.json (the seed's
    layout), out = <metric>_<normalization>_<split>_ckpt-<i>; root = ``config.output_dir`` (a
    tree several workers share) or the workdir."""
    root = os.path.expanduser(config.output_dir) if config.output_dir else workdir
    out_name = (f"{config.metric}_{config.normalization}_{config.dataset_split}"
                f"_ckpt-{ckpt}")
    return os.path.join(root, config.name, train_config.model.name, train_config.data.name,
                        setting_name(train_config), f"seed-{seed}", f"{out_name}-{batch_id}.json")


def sample_order(config, num_points: int) -> np.ndarray:
    """The fixed random order of the split's points (stream mc_sample of mc_sample_seed)."""
    key = rng.stream(config.mc_sample_seed, "mc_sample")
    return np.asarray(jax.random.permutation(key, num_points))[: config.num_samples]


def run(config, workdir: str, progress: bool = True) -> dict:
    validate(config)
    train_config = source_config(config)
    validate(config, train_config)
    dataset = images_lib.load_image_data(train_config.data.name,
                                         train_config.data.data_dir or None)
    num_test = dataset["test"][1].shape[0]
    if config.dataset_split == "test" and config.num_samples > num_test:
        cc.fail("num_samples", config.num_samples,
                f"at most the {num_test} points of the test split")
    program = classify.build_program(train_config, dataset)
    one_output = config.normalization == "crossentropy" or config.target_logit_only
    mode = config.mode or measures.default_mode(
        config.metric, 1 if one_output else dataset["num_classes"])
    ckpts = (list(range(len(train_config.checkpoint_epochs))) if config.checkpoint == -1
             else [config.checkpoint])
    steps = classify.checkpoint_steps(train_config)
    with wd.Workdir(workdir, config.to_dict()) as w:
        state, data = program.init()
        manager = checkpoints.make_manager(os.path.join(os.path.expanduser(config.source), "ckpt"),
                                           keep_steps=steps)
        missing = [i for i in ckpts if steps[i] not in manager.all_steps()]
        if missing:
            manager.close()
            cc.fail("checkpoint", config.checkpoint,
                    f"a checkpoint the source run has saved (missing: {missing}; is it finished?)")
        restored = [checkpoints.restore(manager, steps[i], state) for i in ckpts]
        # the model's variables (params and any BatchNorm statistics) of every checkpoint
        params_CxN = jax.tree.map(
            lambda *xs: jnp.stack(xs), *[{**r.params, **r.model_state} for r in restored])
        manager.close()
        return _measure(config, train_config, program, data, params_CxN, ckpts, mode, w,
                        progress)


def _split_batch(config, data, idx):
    """Points ``idx`` of the split: images, labels (the trained-on, possibly noisy labels for
    train) and label-corruption flags; per learner (N, B, ...) except the shared test split."""
    split = config.dataset_split
    if split == "test":
        return data["test_images"][idx], data["test_labels"][idx], None
    pick, labels = ("train_idx", "train_labels") if split == "train" else ("val_idx", "val_labels")
    rows = np.asarray(data[pick])[:, idx]
    corrupted = np.asarray(data["corrupted"])[:, idx] if split == "train" else None
    return data["images"][rows], np.asarray(data[labels])[:, idx], corrupted


def _num_points(config, data) -> int:
    split = config.dataset_split
    if split == "test":
        return data["test_images"].shape[0]
    return data["train_idx" if split == "train" else "val_idx"].shape[1]


def _measure(config, train_config, program, data, params_CxN, ckpts, mode, w, progress):
    axis = program.axis
    apply_fn = lambda variables, x: program.model.apply(variables, x, train=False)
    shared_points = config.dataset_split == "test"
    available = _num_points(config, data)
    if config.num_samples > available:
        cc.fail("num_samples", config.num_samples,
                f"at most the {available} points of the {config.dataset_split} split")
    order = sample_order(config, available)
    seeds = axis.coords["seed"]

    def one(params, xb, yb, key):
        out = measures.compute_metric(
            config.metric, apply_fn, params, xb, yb, normalization=config.normalization,
            mode=mode, target_logit_only=config.target_logit_only, key=key, tol=config.tol,
            atol=config.atol, max_iters=config.max_iters, num_probes=config.num_probes)
        conv = out.get("converged")
        return out["values"], (jnp.ones_like(out["values"], bool) if conv is None else conv)

    in_pts = None if shared_points else 0
    per_learner = jax.vmap(one, in_axes=(0, in_pts, in_pts, None))
    per_ckpt = jax.jit(jax.vmap(per_learner, in_axes=(0, None, None, None)))

    results = {}
    batch_ids = range(config.skip // config.batch_size, config.num_samples // config.batch_size)
    # keep every row: a re-run appends rows only for batches it computes
    writer = wd.MetricsWriter(w.file("metrics.jsonl"),
                              resume_step=config.num_samples // config.batch_size)
    for b in batch_ids:
        idx = order[b * config.batch_size:(b + 1) * config.batch_size]
        paths = {(c, n): batch_path(w.path, config, train_config, int(seeds[n]), c, b)
                 for c in ckpts for n in range(axis.size)}
        if all(os.path.exists(p) for p in paths.values()):
            done = {k: wd.read_json(p) for k, p in paths.items()}
        else:
            xb, yb, corrupted = _split_batch(config, data, idx)
            key = jax.random.fold_in(rng.stream(config.mc_sample_seed, "mc_sample"), b)
            values, conv = jax.device_get(per_ckpt(params_CxN, xb, yb, key))
            done = {}
            for ci, c in enumerate(ckpts):
                for n in range(axis.size):
                    corr = corrupted[n] if corrupted is not None else np.zeros(len(idx), bool)
                    record = {
                        "metric": config.metric, "normalization": config.normalization,
                        "mode": mode, "checkpoint": c, "seed": int(seeds[n]), "batch_id": b,
                        "split": config.dataset_split, "indices": idx.tolist(),
                        "values": values[ci, n].tolist(), "converged": conv[ci, n].tolist(),
                        "corrupted": corr.tolist(), "mean": float(np.mean(values[ci, n])),
                    }
                    wd.write_json_atomic(paths[(c, n)], record)
                    done[(c, n)] = record
            writer.write([{"step": b, "learner": n, "seed": int(seeds[n]), "checkpoint": c,
                           config.metric: done[(c, n)]["mean"]} for (c, n) in done])
        for k, rec in done.items():
            results.setdefault(k, []).append(rec)
        if progress:
            print(f"[measures] batch {b + 1}/{len(batch_ids)}", flush=True)
    writer.close()
    summary = summarize(config, train_config, axis, ckpts, results)
    wd.write_json_atomic(w.file("summary.json"), summary)
    w.set_status("done", len(batch_ids))
    if progress:
        print(format_summary(summary))
    return summary


def summarize(config, train_config, axis, ckpts, results) -> dict:
    """Per seed and checkpoint: the metric's mean over the measured points (and over clean /
    label-corrupted training points), the fraction of converged power iterations."""
    learners = []
    for (c, n), recs in sorted(results.items()):
        v = np.concatenate([r["values"] for r in recs])
        corr = np.concatenate([r["corrupted"] for r in recs]).astype(bool)
        conv = np.concatenate([r["converged"] for r in recs]).astype(bool)
        row = {"seed": int(axis.coords["seed"][n]), "learner": n, "checkpoint": c,
               "epoch": int(train_config.checkpoint_epochs[c]), "num_points": int(v.size),
               config.metric: float(v.mean()), "converged_fraction": float(conv.mean())}
        row[f"{config.metric}_clean"] = float(v[~corr].mean()) if (~corr).any() else None
        row[f"{config.metric}_corrupted"] = float(v[corr].mean()) if corr.any() else None
        learners.append(row)
    per_ckpt = {}
    for c in ckpts:
        vals = np.array([r[config.metric] for r in learners if r["checkpoint"] == c])
        per_ckpt[str(c)] = {"mean": float(vals.mean()), "std": float(vals.std()),
                            "min": float(vals.min()), "max": float(vals.max()),
                            "n": int(vals.size)}
    return {"metric": config.metric, "normalization": config.normalization,
            "split": config.dataset_split, "learners": learners, "checkpoints": per_ckpt}


def format_summary(summary: dict) -> str:
    m = summary["metric"]
    lines = [f"{m} ({summary['normalization']}, {summary['split']} split): mean over points",
             f"{'seed':>6}{'ckpt':>6}{'epoch':>7}{m:>26}{'clean':>12}{'corrupted':>12}"]
    for r in summary["learners"]:
        fmt = lambda v: f"{v:>12.4f}" if v is not None else f"{'-':>12}"
        lines.append(f"{r['seed']:>6}{r['checkpoint']:>6}{r['epoch']:>7}{r[m]:>26.5f}"
                     f"{fmt(r[m + '_clean'])}{fmt(r[m + '_corrupted'])}")
    return "\n".join(lines)
