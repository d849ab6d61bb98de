"""Measures driver: data-driven statistics of a training run's numbered checkpoints.

Reads ``config.source`` (a ``launch/train.py`` workdir, through ``irmx.io.runs``), restores
checkpoint(s) of every learner, and evaluates one metric (``irmx.measures``) on a fixed random
sample of points, batch by batch, all learners (and checkpoints) in one vmapped program. Each
batch is written as JSON in the seed's layout, its file name carrying a digest of every setting
that changes its numbers; a re-run (or another run sharing ``output_dir``) skips the batches
already written with the same settings.

The run is an eval-only ``Program`` of the one runner (``irmx.experiments.loop``): its learners
are the source's learners times the measured checkpoints (``measured_axis``), so the workdir
keeps the contract of every family: status running -> done | failed, one result per (learner,
checkpoint) in ``DIR/learners/``, summary.json from the shared ``irmx.learners.summarize`` (per
checkpoint, mean/std/min/max over seeds) and nothing recomputed or rewritten on a re-run of a
finished workdir.
"""

import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import threadpoolctl  # a dependency of scikit-learn

from irmx import config_checks as cc
from irmx import measures, registry, rng
from irmx.data import images as images_lib
from irmx.experiments import classify
from irmx.experiments.loop import Program, Progress, run_program
from irmx.io import runs, tables
from irmx.io import workdir as wd
from irmx.learners import LearnerAxis, zip_factor
from irmx.measures import jacobian as jacobian_lib
from irmx.measures import plots as measures_plots

SPLITS = ("train", "val", "test")
# The source data that is per learner (the rest, images and the test split, is shared).
PER_LEARNER = ("train_idx", "val_idx", "train_labels", "val_labels", "clean_labels",
               "corrupted", "shuffle_key")


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
    cc.choice(config, "seed_compat", (True, False))
    if config.seed_compat:  # the seed's jacobian_operator_norm (measures.seed_operator_norm)
        if config.metric != "jacobian_operator_norm":
            cc.fail("seed_compat", True, "False unless config.metric='jacobian_operator_norm'")
        if config.mode == "matrix_free":
            cc.fail("seed_compat", True, "False with config.mode='matrix_free' (the seed "
                    "iterates on the explicit Jacobian: mode per_output, bigmem or '')")
        if config.target_logit_only or config.normalization == "crossentropy":
            cc.fail("seed_compat", True, "False with one output (config.normalization="
                    "'crossentropy' or config.target_logit_only): the seed fails there")
    cc.number(config, "max_iters", 1, integer=True)
    cc.number(config, "num_probes", 0, integer=True)  # 0 = adaptive (rel_error)
    cc.number(config, "rel_error", 0.0, low_open=True)
    block, least = jacobian_lib.HUTCHINSON_BLOCK, jacobian_lib.HUTCHINSON_MIN_PROBES
    cc.number(config, "max_probes", least, integer=True)
    if config.max_probes % block:
        cc.fail("max_probes", config.max_probes, f"a multiple of {block}, >= {least}")
    cc.choice(config, "probe_space", jacobian_lib.PROBE_SPACES)
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
        if operator:  # seed_compat: the seed's fixed 10 steps and atol, not tol / max_iters
            m.update(seed_compat=config.seed_compat)
        if mode in ("", "matrix_free") and operator and not config.seed_compat:
            m.update(tol=config.tol, atol=config.atol, max_iters=config.max_iters)
        elif mode == "matrix_free":  # Hutchinson
            m.update(num_probes=config.num_probes, probe_space=config.probe_space)
            if config.num_probes == 0:  # adaptive
                m.update(rel_error=config.rel_error, max_probes=config.max_probes)
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


def measured_axis(source_axis: LearnerAxis, ckpts, epochs) -> LearnerAxis:
    """The measures run's learners: each learner of the source run (its seeds x grid) at each
    measured checkpoint, the checkpoint (with its epoch) the fastest factor. A summary row is
    one (learner, checkpoint); its grid, per checkpoint, is the statistics over seeds."""
    return LearnerAxis((*source_axis.factors, zip_factor(
        {"checkpoint": tuple(ckpts), "epoch": tuple(int(epochs[c]) for c in ckpts)})))


def _indices_of(axis: LearnerAxis, coords) -> np.ndarray:
    """Axis positions of the learners whose numeric coordinates are ``coords`` (what the
    runner hands ``init``: name -> array (m,)); every learner of ``axis`` when None."""
    if coords is None:
        return np.arange(axis.size)
    table = axis.numeric_coords()
    hits = np.all([table[k][:, None] == np.asarray(v)[None, :] for k, v in coords.items()], 0)
    if not np.all(hits.sum(0) == 1):
        raise ValueError("measures: the learners' numeric coordinates do not name them uniquely")
    return np.argmax(hits, 0)


def build_program(config, workdir: str, progress: bool = True) -> Program:
    """The measures run as an eval-only ``Program`` (``chunk=None``) over ``measured_axis``:
    ``init`` restores the asked learners' checkpoints and their data, ``evaluate`` measures
    them batch by batch, writing (or reusing) the per-batch JSON files and one metrics.jsonl
    row per batch and learner, and returns per learner the metric's mean over the points, over
    clean / label-corrupted training points (NaN when none), the fraction of converged power
    iterations and the number of points. Every bad value fails here, before anything is
    compiled or ``workdir`` is created."""
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
    mode = config.mode or ("per_output" if config.seed_compat else measures.default_mode(
        config.metric, 1 if one_output else dataset["num_classes"]))
    axis = measured_axis(source.axis, ckpts, train_config.checkpoint_epochs)
    model = source.model
    apply_fn = lambda variables, x: model.apply(variables, x, train=False)

    def one(params, xb, yb, key):
        out = measures.compute_metric(
            config.metric, apply_fn, params, xb, yb, normalization=config.normalization,
            mode=mode, target_logit_only=config.target_logit_only, key=key, tol=config.tol,
            atol=config.atol, max_iters=config.max_iters, num_probes=config.num_probes,
            rel_error=config.rel_error, max_probes=config.max_probes,
            probe_space=config.probe_space, seed_compat=config.seed_compat)
        if out.get("converged") is None:
            out["converged"] = jnp.ones_like(out["values"], bool)
        # stderr / probes: arrays for an estimate (Hutchinson), None (absent) otherwise
        return {k: out.get(k) for k in ("values", "converged", "stderr", "probes")}

    in_pts = None if config.dataset_split == "test" else 0
    per_learner = jax.jit(jax.vmap(one, in_axes=(0, in_pts, in_pts, None)))

    def init(coords=None):
        """Variables of learner (source learner n, checkpoint c) for each asked learner, and
        the data of its source learner (split, trained-on labels, corruption flags)."""
        index = _indices_of(axis, coords)
        src, ckpt = np.divmod(index, len(ckpts))
        learners, src_pos = np.unique(src, return_inverse=True)
        used, ckpt_pos = np.unique(ckpt, return_inverse=True)
        # the model's variables (params and any BatchNorm statistics) of those checkpoints
        variables = jax.tree.map(lambda *xs: jnp.stack(xs), *[
            source.variables(steps[ckpts[c]], learners=[int(n) for n in learners])
            for c in used])
        variables = jax.tree.map(lambda a: a[ckpt_pos, src_pos], variables)
        data = jax.device_get(source.program.init(
            source.axis.numeric_coords(learners))[1])
        data = {k: (np.asarray(v)[src_pos] if k in PER_LEARNER else v) for k, v in data.items()}
        return {"variables": variables, "index": index, "source": src}, data

    root = os.path.abspath(workdir)
    ids = axis.learner_ids(config.to_dict())
    rows = axis.rows
    source_rows = source.axis.rows
    epochs = train_config.checkpoint_epochs

    def evaluate(state, data):
        index, src = state["index"], state["source"]
        available = _num_points(config, data)
        if config.num_samples > available:
            cc.fail("num_samples", config.num_samples,
                    f"at most the {available} points of the {config.dataset_split} split")
        order = sample_order(config, available)
        # the file's identity: the source learner's coordinates (the checkpoint is in its name)
        identities = [result_identity(config, train_config, source_rows[n]) for n in src]
        batch_ids = range(config.skip // config.batch_size,
                          config.num_samples // config.batch_size)
        # keep every row: a re-run appends rows only for batches it computes
        writer = wd.MetricsWriter(os.path.join(root, "metrics.jsonl"),
                                  resume_step=config.num_samples // config.batch_size)
        bar = Progress(config.name, len(batch_ids), progress)
        results = [[] for _ in index]
        try:
            for k, b in enumerate(batch_ids):
                idx = order[b * config.batch_size:(b + 1) * config.batch_size]
                paths = [batch_path(root, config, train_config, rows[i]["seed"],
                                    rows[i]["checkpoint"], b, source_rows[n])
                         for i, n in zip(index, src)]
                done = _reusable(paths, identities)
                if done is None:
                    done = _measure_batch(config, train_config, data, state["variables"],
                                          idx, b, mode, per_learner, [rows[i] for i in index],
                                          identities)
                    for path, record in zip(paths, done):
                        wd.write_json_atomic(path, record)
                    writer.write([{"step": b, "learner": int(i), "learner_id": ids[i],
                                   **rows[i], config.metric: rec["mean"]}
                                  for i, rec in zip(index, done)])
                for out, rec in zip(results, done):
                    out.append(rec)
                bar.update(k + 1, f"batch {b}")
        finally:
            writer.close()
            bar.done()
        return _learner_metrics(config.metric, results)

    return Program(
        name=config.name,
        family="measures",
        axis=axis,
        init=init,
        evaluate=evaluate,
        chunk=None,
        report=format_summary,
        plot=measures_plots.measures_run_figures,
        model=model,
        extend_summary=lambda summary: {
            "metric": config.metric, "normalization": config.normalization, "mode": mode,
            "split": config.dataset_split, "source": source.path,
            "checkpoint_epochs": [int(epochs[c]) for c in ckpts]},
    )


def run(config, workdir: str, progress: bool = True) -> dict:
    """Measure ``config.source``'s checkpoints into ``workdir`` through the one runner
    (``irmx.experiments.loop.run_program``): status running -> done | failed, one stored result
    per (learner, checkpoint), summary.json from the shared ``summarize``; a finished workdir
    is left as it is ("nothing to do")."""
    program = build_program(config, workdir, progress)
    # Lanczos (matrix_free) runs a LAPACK eigh of a small K x K matrix per iteration: with
    # OpenBLAS's threads on a busy CPU that call was measured up to 50x slower (0.57 s instead
    # of 10 ms for 8 matrices of 102 x 102); XLA's own threads run everything else.
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        summary = run_program(program, config.to_dict(), workdir, progress)
    if summary:
        print(format_summary(summary))
    return summary


def _split_batch(config, data, idx):
    """Points ``idx`` (positions in the split) of the split: images, trained-on labels (the
    noisy labels for train), clean labels, label-corruption flags and data-set indices (the
    rows of the source's data set: of its train pool for train and val, of its test set for
    test); per learner (N, B, ...) except the shared test split (B, ...)."""
    split = config.dataset_split
    if split == "test":
        labels = data["test_labels"][idx]
        return dict(x=data["test_images"][idx], targets=labels, ground_truths=labels,
                    corrupted=None, sample_ids=idx)
    if split == "train":
        rows = np.asarray(data["train_idx"])[:, idx]
        targets = np.asarray(data["train_labels"])[:, idx]
        return dict(x=data["images"][rows], targets=targets,
                    ground_truths=np.asarray(data["clean_labels"])[:, idx],
                    corrupted=np.asarray(data["corrupted"])[:, idx], sample_ids=rows)
    rows = np.asarray(data["val_idx"])[:, idx]
    labels = np.asarray(data["val_labels"])[:, idx]  # validation labels are never corrupted
    return dict(x=data["images"][rows], targets=labels, ground_truths=labels, corrupted=None,
                sample_ids=rows)


def _num_points(config, data) -> int:
    split = config.dataset_split
    if split == "test":
        return data["test_images"].shape[0]
    return data["train_idx" if split == "train" else "val_idx"].shape[1]


# Version of the per-batch record's layout: a file of another layout is measured again.
RECORD_FORMAT = 2


def seed_metadata(config, train_config, row) -> dict:
    """The per-batch file's ``metadata`` under the seed's key names (compute_stats.py), for the
    learner at ``row`` (its coordinates and checkpoint). The seed's three seeds map to irmx's
    named streams: ``label-noise-seed`` and ``data-split-seed`` are both the learner's data
    seed, whose streams ``label_noise`` and ``data_split`` draw the noise and the split (its
    ``data_seed`` coordinate, else ``data.data_seed`` when >= 0, else its ``seed``:
    ``classify.data_coords``); ``mc-sample-seed`` is ``mc_sample_seed``, whose ``mc_sample``
    stream orders the points and draws the estimators' probes; ``seed`` (init, shuffling) is
    the learner's seed. ``checkpoint`` is the ordinal checkpoint, as the seed's default
    (not --checkpoint-by-step); normalization "none" is the seed's None."""
    d = train_config.data
    coords = classify.data_coords(train_config, row)
    return {
        "model": train_config.model.name, "dataset": d.name, "split": config.dataset_split,
        "seed": int(row["seed"]), "label-noise": float(row.get("label_noise", d.label_noise)),
        "augmentation": bool(d.augmentation), "checkpoint": int(row["checkpoint"]),
        "nsamples": config.num_samples,
        "label-noise-seed": int(coords.get("data_seed", row["seed"])),
        "data-split-seed": int(coords.get("data_seed", row["seed"])),
        "mc-sample-seed": config.mc_sample_seed, "metric": config.metric,
        "normalization": None if config.normalization == "none" else config.normalization,
        "sampling-strategy": "none",
    }


def _measure_batch(config, train_config, data, variables_M, idx, b, mode, per_learner, rows,
                   identities):
    """One batch of points ``idx`` for the M learners: their per-batch records, irmx's fields
    (``indices`` = positions in the split, ``values``, ``stderr`` and ``probes`` of an estimate,
    ``converged``, ``corrupted``, ``mean``, ``identity``) and the seed code's (``stats`` =
    ``stat.view(batch_size, -1).tolist()``, ``sample_ids`` = data-set indices, ``targets`` =
    trained-on labels, ``ground_truths`` = clean labels, ``metadata``)."""
    pts = _split_batch(config, data, idx)
    key = jax.random.fold_in(rng.stream(config.mc_sample_seed, "mc_sample"), b)
    out = jax.device_get(per_learner(variables_M, pts["x"], pts["targets"], key))
    per = lambda a, j: np.asarray(a if a.ndim == 1 else a[j])  # shared test split: (B,)
    records = []
    for j, row in enumerate(rows):
        values = np.asarray(out["values"][j])
        corr = (per(pts["corrupted"], j) if pts["corrupted"] is not None
                else np.zeros(len(idx), bool))
        estimate = out["stderr"] is not None
        records.append({
            "format": RECORD_FORMAT,
            "metric": config.metric, "normalization": config.normalization, "mode": mode,
            "checkpoint": row["checkpoint"], "seed": row["seed"], "batch_id": b,
            "split": config.dataset_split, "indices": idx.tolist(),
            "values": values.tolist(), "converged": out["converged"][j].tolist(),
            "stderr": out["stderr"][j].tolist() if estimate else None,
            "probes": out["probes"][j].tolist() if estimate else None,
            "corrupted": corr.tolist(), "mean": float(np.mean(values)),
            "identity": identities[j],
            "stats": values.reshape(len(idx), -1).tolist(),
            "sample_ids": per(pts["sample_ids"], j).tolist(),
            "targets": per(pts["targets"], j).tolist(),
            "ground_truths": per(pts["ground_truths"], j).tolist(),
            "metadata": seed_metadata(config, train_config, row),
        })
    return records


def _reusable(paths: list, identities: list):
    """The records of a batch already measured with these settings (every learner) in this
    layout, else None."""
    if not all(os.path.exists(p) for p in paths):
        return None
    done = [wd.read_json(p) for p in paths]
    same = all(rec.get("identity") == wd.to_json(ident) and rec.get("format") == RECORD_FORMAT
               for rec, ident in zip(done, identities))
    return done if same else None


def _learner_metrics(metric: str, results: list) -> dict:
    """Per learner, from its batch records: the metric's mean over the measured points and over
    clean / label-corrupted training points (NaN when there are none), the fraction of converged
    iterations (Lanczos, seed_compat; Hutchinson: of points that reached rel_error), the number
    of points; for an estimate (records with ``stderr``) also the standard error of the mean
    over the points, sqrt(sum_i se_i^2) / n (the points' estimates are independent), and the
    mean probes."""
    estimate = all(r.get("stderr") is not None for recs in results for r in recs)
    keys = (metric, f"{metric}_clean", f"{metric}_corrupted", "converged_fraction", "num_points",
            *((f"{metric}_stderr", "probes") if estimate else ()))
    out = {k: [] for k in keys}
    for recs in results:
        v = np.concatenate([r["values"] for r in recs])
        corr = np.concatenate([r["corrupted"] for r in recs]).astype(bool)
        conv = np.concatenate([r["converged"] for r in recs]).astype(bool)
        out[metric].append(v.mean())
        out[f"{metric}_clean"].append(v[~corr].mean() if (~corr).any() else np.nan)
        out[f"{metric}_corrupted"].append(v[corr].mean() if corr.any() else np.nan)
        out["converged_fraction"].append(conv.mean())
        out["num_points"].append(v.size)
        if estimate:  # a null stderr (one probe: no variance) makes the mean's NaN
            se = np.concatenate([np.asarray(r["stderr"], np.float64) for r in recs])
            out[f"{metric}_stderr"].append(np.sqrt(np.sum(np.square(se))) / se.size)
            out["probes"].append(np.mean(np.concatenate([r["probes"] for r in recs])))
    return {k: np.asarray(v, np.float64) for k, v in out.items()}


def format_summary(summary: dict) -> str:
    """Per (seed, checkpoint): the metric's mean over the points, over clean and over
    label-corrupted ones (for an estimated metric also the mean's standard error and the mean
    probes per point); then per checkpoint (and grid point) the mean +- std over seeds."""
    m = summary["metric"]
    grid_names = [n for n in summary["axis"] if n not in ("seed", "checkpoint", "epoch")]
    label = lambda r: ",".join(f"{n}={r[n]:g}" for n in grid_names)
    estimate = all(m + "_stderr" in r for r in summary["learners"])
    extra = ("stderr", "probes") if estimate else ()
    header = ("seed", "ckpt", "epoch", *(("learner",) if grid_names else ()), m, *extra,
              "clean", "corrupted")
    rows = [(r["seed"], r["checkpoint"], r["epoch"], *((label(r),) if grid_names else ()),
             r[m], *((r[m + "_stderr"], f"{r['probes']:.0f}") if estimate else ()), r[m + "_clean"],
             r[m + "_corrupted"]) for r in summary["learners"]]
    table = tables.format_table(
        header, rows, rule=False, digits=5,
        title=f"{m} ({summary['normalization']}, {summary['split']} split): mean over points")
    lines = [table]
    lines.append(f"over seeds (mean +- std of {m}):")
    for g in summary["grid"]:
        s = g[m]
        where = ", ".join([f"ckpt {g['checkpoint']} (epoch {g['epoch']})"]
                          + [f"{n}={g[n]:g}" for n in grid_names])
        value = "-" if s["mean"] is None else f"{s['mean']:.5f} +- {s['std']:.5f}"
        lines.append(f"  {where}: {value} ({s['n']} seeds)")
    return "\n".join(lines)
