"""Measures driver: data-driven statistics of a training run's numbered checkpoints.

Reads ``config.source`` (a ``launch/train.py`` workdir, through ``irmx.io.runs``), restores
checkpoint(s) of every learner, and evaluates one metric (``irmx.measures``) on a fixed random
sample of points, batch by batch, all learners (and checkpoints) in one vmapped program. Each
batch is written as JSON in the seed's layout, its file name carrying a digest of every setting
that changes its numbers; a re-run (or another run sharing ``output_dir``) skips the batches
already written with the same settings.
"""

import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from irmx import config_checks as cc
from irmx import measures, registry, rng
from irmx.data import images as images_lib
from irmx.experiments import classify
from irmx.io import runs
from irmx.io import workdir as wd

SPLITS = ("train", "val", "test")


SOURCE_KIND = "a classifier training run (a launch/train.py workdir)"


def load_source(config) -> runs.Run:
    """The training run ``config.source`` (nothing built yet); one line naming ``source`` when
    it is not a classifier training run."""
    if not config.source:
        cc.fail("source", config.source, SOURCE_KIND)
    try:
        path, _, family = runs.read_config(config.source)
        if family != "classify":
            what = f"an {family!r} run" if family else "a run of no known family"
            cc.fail("source", config.source,
                    f"{SOURCE_KIND}; {path} holds {what}, not a classifier training run")
        return runs.load(config.source)
    except runs.RunError as e:
        cc.fail("source", config.source, f"{SOURCE_KIND}; {e}")


def validate(config, train_config=None) -> None:
    cc.choice(config, "metric", registry.names("metric"))
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


# Training settings that change no number of the checkpoints (the learner axis is replaced by
# each learner's own coordinates): runs that differ only here share measured results.
SOURCE_UNUSED = ("name", "family", "seed", "seeds", "num_seeds", "vmapped", "eval_every",
                 "eval_batch_size", "evals", "checkpoint_every", "data.data_dir")


def _digest(obj) -> str:
    text = json.dumps(wd.to_json(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def result_identity(config, train_config, coords=None) -> dict:
    """Every setting that changes the numbers of one learner's per-batch result: the measure's
    (those its metric and mode use), the source run's training settings (as a digest) and the
    learner's coordinates besides its seed (vmapped values)."""
    m = {"metric": config.metric, "split": config.dataset_split,
         "batch_size": config.batch_size,  # which points make batch b
         "mc_sample_seed": config.mc_sample_seed}  # the point order and the estimators' key
    if config.metric in measures.JACOBIAN_METRICS:
        operator = config.metric == "jacobian_operator_norm"
        # mode "": the operator norm's mode follows the source's class count; per_output else
        mode = config.mode or ("" if operator else measures.default_mode(config.metric))
        m.update(normalization=config.normalization, target_logit_only=config.target_logit_only,
                 mode=mode)
        if mode in ("", "matrix_free") and operator:
            m.update(tol=config.tol, atol=config.atol, max_iters=config.max_iters)
        elif mode == "matrix_free":
            m.update(num_probes=config.num_probes)
    trained = {k: v for k, v in wd.flatten(train_config.to_dict()).items()
               if not any(k == u or k.startswith(u + ".") for u in SOURCE_UNUSED)}
    learner = {k: v for k, v in (coords or {}).items() if k != "seed"}
    return {"measure": m, "source": _digest(trained), "learner": wd.to_json(learner)}


def batch_path(workdir, config, train_config, seed: int, ckpt: int, batch_id: int,
               coords=None) -> str:
    """<root>/<name>/<model>/<data>/<setting>/seed-<seed>/<out>-<batch_id>.json (the seed's
    layout), out = <metric>_<normalization>_<split>_ckpt-<i>_<id>, id = a digest of
    ``result_identity`` (so runs differing in any setting that changes a number never share a
    file); root = ``config.output_dir`` (a tree several workers share) or the workdir."""
    root = os.path.expanduser(config.output_dir) if config.output_dir else workdir
    rid = _digest(result_identity(config, train_config, coords))
    out_name = (f"{config.metric}_{config.normalization}_{config.dataset_split}"
                f"_ckpt-{ckpt}_{rid}")
    return os.path.join(root, config.name, train_config.model.name, train_config.data.name,
                        setting_name(train_config), f"seed-{seed}", f"{out_name}-{batch_id}.json")


def sample_order(config, num_points: int) -> np.ndarray:
    """The fixed random order of the split's points (stream mc_sample of mc_sample_seed)."""
    key = rng.stream(config.mc_sample_seed, "mc_sample")
    return np.asarray(jax.random.permutation(key, num_points))[: config.num_samples]


def run(config, workdir: str, progress: bool = True) -> dict:
    validate(config)
    source = load_source(config)
    train_config = source.config
    validate(config, train_config)
    steps = classify.checkpoint_steps(train_config)
    ckpts = (list(range(len(train_config.checkpoint_epochs))) if config.checkpoint == -1
             else [config.checkpoint])
    saved = source.checkpoint_steps()
    missing = [i for i in ckpts if steps[i] not in saved]
    if missing:
        cc.fail("checkpoint", config.checkpoint,
                f"a checkpoint the source run has saved (missing: {missing}, at steps "
                f"{[steps[i] for i in missing]}; saved steps: "
                f"{', '.join(map(str, saved)) or 'none'}; is it finished?)")
    dataset = images_lib.load_image_data(train_config.data.name,
                                         train_config.data.data_dir or None)
    num_test = dataset["test"][1].shape[0]
    if config.dataset_split == "test" and config.num_samples > num_test:
        cc.fail("num_samples", config.num_samples,
                f"at most the {num_test} points of the test split")
    source.build(dataset=dataset)
    one_output = config.normalization == "crossentropy" or config.target_logit_only
    mode = config.mode or measures.default_mode(
        config.metric, 1 if one_output else dataset["num_classes"])
    with wd.Workdir(workdir, config.to_dict()) as w:
        data = source.data()
        # the model's variables (params and any BatchNorm statistics) of every checkpoint
        params_CxN = jax.tree.map(lambda *xs: jnp.stack(xs),
                                  *[source.variables(steps[i]) for i in ckpts])
        return _measure(config, train_config, source, data, params_CxN, ckpts, mode, w,
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


def _measure(config, train_config, source, data, params_CxN, ckpts, mode, w, progress):
    axis = source.axis
    model = source.model
    apply_fn = lambda variables, x: model.apply(variables, x, train=False)
    shared_points = config.dataset_split == "test"
    available = _num_points(config, data)
    if config.num_samples > available:
        cc.fail("num_samples", config.num_samples,
                f"at most the {available} points of the {config.dataset_split} split")
    order = sample_order(config, available)
    seeds = axis.coords["seed"]
    coords = [axis.coords_of(n) for n in range(axis.size)]
    identities = [result_identity(config, train_config, c) for c in coords]

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
        paths = {(c, n): batch_path(w.path, config, train_config, int(seeds[n]), c, b,
                                    coords[n])
                 for c in ckpts for n in range(axis.size)}
        done = _reusable(paths, identities)
        if done is None:
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
                        "identity": identities[n],
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


def _reusable(paths: dict, identities: list):
    """The records of a batch already measured with these settings (every learner and
    checkpoint), else None."""
    if not all(os.path.exists(p) for p in paths.values()):
        return None
    done = {k: wd.read_json(p) for k, p in paths.items()}
    same = all(rec.get("identity") == wd.to_json(identities[n]) for (_, n), rec in done.items())
    return done if same else None


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
