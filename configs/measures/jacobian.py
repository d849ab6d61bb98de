r"""Data-driven measures of trained checkpoints (the seed's compute_stats.py).

  python launch/measures.py --config=configs/measures/jacobian.py \
      --config.source=runs/c10-r18 --config.checkpoint=1 --config.metric=jacobian_operator_norm \
      --config.normalization=softmax --config.dataset_split=train --config.num_samples=49000 \
      --config.batch_size=140 --config.skip=0 --workdir=runs/c10-r18-stats

``source`` is a workdir of ``launch/train.py``; checkpoint i is the model after that run's
``checkpoint_epochs[i]`` epochs (-1: every checkpoint). All seeds (and with -1 all
checkpoints) are measured in one vmapped program. Per-batch JSON goes to
``<root>/<name>/<model>/<data>/<setting>/seed-<seed>/<out>-<batch_id>.json`` (the seed's
layout; out = <metric>_<normalization>_<split>_ckpt-<i>, root = ``output_dir`` or the workdir).
The run goes through the one runner as an eval-only program whose learners are the source's
learners x the measured checkpoints: status.json running -> done | failed (with the error);
summary.json's ``learners`` hold, per seed and checkpoint, the metric's mean over the measured
points (clean and label-corrupted training points also separately), its ``grid``, per
checkpoint, the mean/std/min/max over seeds. A re-run skips finished batches; a re-run of a
finished workdir does nothing and says so.

Each per-batch JSON holds irmx's fields (``indices``: positions in the split, ``values``,
``converged``, ``corrupted``, ``mean``, ``identity``; ``stderr`` and ``probes`` per point for
the Hutchinson estimate) and those the seed's code writes, so its analysis scripts read the
files: ``stats`` (one 1-element list per point), ``sample_ids`` (indices into the data set:
its train pool for train / val, its test set for test), ``targets`` (the labels trained on:
noisy for train), ``ground_truths`` (clean labels) and ``metadata`` with the seed's keys
(``label-noise-seed`` = ``data-split-seed`` = the learner's data seed, ``mc-sample-seed`` =
``mc_sample_seed``; see ``irmx.experiments.measures.seed_metadata``).

The Frobenius norm in mode matrix_free (Hutchinson's estimator) uses by default as many probes
per point as reach ``rel_error`` (1% relative standard error of ||J||_F: from ~30 to thousands
of probes, far more than the K backward passes of the exact modes when K is small); the
printed table then shows the mean's standard error and the mean probes per point. Measured on
the default digits net (noisy_classification.py, one seed, 500 training points): 64 fixed
probes were off by 2.8% rms (at most 9.6%) with normalization none and 5.3% (17%) with
softmax; the adaptive default by 1.06% (3.6%) and 0.98% (3.1%), with 507 and 1613 probes per
point on average (304-1056 and 544-2752) against the exact modes' 10 backward passes.

Parallel workers: the points are the first ``num_samples`` of one fixed random order, and a
worker measures points [skip, num_samples). Two workers over 256 points in batches of 128::

  worker 0: --config.num_samples=128 --config.batch_size=128 --workdir=w0 --config.output_dir=out
  worker 1: --config.num_samples=256 --config.batch_size=128 --config.skip=128 --workdir=w1 \
            --config.output_dir=out
"""

import ml_collections

from irmx.config_args import parse_arg


def get_config(arg=None):
    a = parse_arg(arg, variants=("smoke", "seed_compat"), combine=False)
    c = ml_collections.ConfigDict()
    c.name = "stats"  # the seed's NAME: first folder of the per-batch outputs
    c.source = ""  # training workdir (launch/train.py)
    c.checkpoint = 1  # numbered checkpoint of the source run; -1 = all of them
    c.metric = "jacobian_operator_norm"  # jacobian | jacobian_operator_norm | accuracy | ...
    c.normalization = "none"  # none | softmax | logsoftmax | crossentropy
    c.mode = ""  # per_output | bigmem | matrix_free; "" = the cheaper: for the operator norm
    #              exact per_output up to 16 outputs, matrix_free above; else per_output
    c.target_logit_only = False  # Jacobian of the target logit only
    c.dataset_split = "train"  # train | val | test
    c.num_samples = 1000  # points measured (the first num_samples of a fixed random order)
    c.batch_size = 100  # points per batch and per output file; must divide num_samples
    c.skip = 0  # first point of this worker (a multiple of batch_size)
    c.output_dir = ""  # root of the per-batch JSON tree ("" = the workdir); workers may share it
    c.mc_sample_seed = 0  # seed of the random point order (stream mc_sample)
    c.tol = 1e-5  # matrix_free operator norm (Lanczos): bound on the relative error of sigma
    c.atol = 0.0  # matrix_free operator norm: absolute error bound added to tol * sigma
    c.max_iters = 200  # matrix_free operator norm: cap on Lanczos iterations (2 vectors each)
    c.seed_compat = False  # operator norm: the seed's number (its power iteration on its
    #                        reshaped Jacobian: 0.45-0.85 of sigma_max), not sigma_max
    # matrix_free Frobenius norm (Hutchinson): probes per point; 0 = adaptive, per point as many
    # as bring the estimated relative standard error of ||J||_F to rel_error (at least 32, in
    # blocks of 16, at most max_probes; the probes used and the stderr go into the results)
    c.num_probes = 0  # probes per point (0 = adaptive)
    c.rel_error = 0.01  # adaptive: target relative standard error of ||J||_F
    c.max_probes = 4096  # adaptive: cap on the probes per point (a multiple of 16)
    c.probe_space = "output"  # Rademacher probes in output space (vjp) | input space (jvp)
    if "smoke" in a.variants:
        c.num_samples = 40
        c.batch_size = 20
    elif "seed_compat" in a.variants:
        c.seed_compat = True  # mode "" = per_output, the seed's jacobian_low_mem
    return c
