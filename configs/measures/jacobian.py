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

Parallel workers: the points are the first ``num_samples`` of one fixed random order, and a
worker measures points [skip, num_samples). Two workers over 256 points in batches of 128::

  worker 0: --config.num_samples=128 --config.batch_size=128 --workdir=w0 --config.output_dir=out
  worker 1: --config.num_samples=256 --config.batch_size=128 --config.skip=128 --workdir=w1 \
            --config.output_dir=out
"""

import ml_collections

from irmx.config_args import parse_arg


def get_config(arg=None):
    a = parse_arg(arg, variants=("smoke", "seed_power_iteration"), combine=False)
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
    c.tol = 1e-5  # matrix_free: relative tolerance of power iteration
    c.atol = 0.0  # matrix_free: absolute tolerance (the seed's: 1e-2 with tol 0)
    c.max_iters = 200  # matrix_free: iteration cap (seed: 10)
    c.num_probes = 64  # matrix_free Frobenius (Hutchinson): probes per sample
    if "smoke" in a.variants:
        c.num_samples = 40
        c.batch_size = 20
    elif "seed_power_iteration" in a.variants:
        c.mode = "matrix_free"
        c.tol, c.atol, c.max_iters = 0.0, 1e-2, 10
    return c
