r"""Benchmark: memory and time of Diff-through-Opt's exact hypergradient, one level of
checkpoints (every step under ``jax.checkpoint``) vs two levels (checkpointed blocks of
checkpointed steps, ``algorithm.remat_block``).

Run::

    python benchmarks/hypergrad_memory.py                       # lookback 1000 and 10000
    python benchmarks/hypergrad_memory.py --lookbacks=200,1000 --learners=4

Workload: ``configs/hypergrad/fashion_mnist.py:diff_through_opt_full`` (the MLP with 50 hidden
units, batch 50, SGD with momentum and weight decay) on its offline default (scikit-learn's 8x8
digits: MLP 64-50-10; with ``--data_dir`` the tfds Fashion-MNIST there, 784-50-10) with the
interval and the differentiated window both set to each ``--lookbacks`` value: one chunk = that
many network steps differentiated through + one hyperparameter step, ``--learners`` vmapped
initialisations. For each ``remat_block`` of ``--blocks`` (1: one level, the state of every
step kept for the backward pass; 0: B = ceil(sqrt(lookback)) steps per block, so the backward
pass keeps lookback / B + B states; column ``states kept``), printed side by side:

* ``temp MiB``: XLA's compiled temporary buffer size of the chunk
  (``jit(...).lower(...).compile().memory_analysis().temp_size_in_bytes``), the memory the
  backward pass needs beyond inputs and outputs; measured without running it, so the 1-level
  column is reported even where it would not fit;
* ``s / chunk``: wall time of one warm chunk (compilation excluded; skipped with
  ``--no-time`` or when the temp size exceeds ``--max_run_gib``).

The last line is machine-readable::

    hypergrad_memory lookback=L one_level_mib=A two_level_mib=B ratio=A/B time_ratio=T

for the largest lookback (T = two-level / one-level seconds per chunk, nan when not timed).
"""

import argparse
import math

import jax
from learner_groups import now  # the benchmarks' shared timing helper (script dir on sys.path)

from irmx.configs.hypergrad import fashion_mnist
from irmx.experiments import hypergrad as hg


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lookbacks", default="1000,10000",
                   help="differentiated windows (= intervals), comma-separated")
    p.add_argument("--blocks", default="1,0", help="remat_block values (1: one level, 0: sqrt)")
    p.add_argument("--learners", type=int, default=1, help="vmapped initialisations")
    p.add_argument("--data_dir", default="", help="tfds data_dir holding fashion_mnist")
    p.add_argument("--time", action=argparse.BooleanOptionalAction, default=True,
                   help="also time one warm chunk")
    p.add_argument("--max_run_gib", type=float, default=4.0,
                   help="do not run a chunk whose temporary buffers exceed this")
    return p.parse_args(argv)


def make_config(lookback: int, remat_block: int, learners: int, data_dir: str = ""):
    c = fashion_mnist.get_config("diff_through_opt_full")
    if data_dir:
        c.data.name, c.data.data_dir = "fashion_mnist", data_dir
    c.num_inits = learners
    c.algorithm.interval = lookback
    c.algorithm.lookback = lookback
    c.algorithm.hyper_steps = 1
    c.algorithm.remat_block = remat_block
    return c


def measure(lookback: int, remat_block: int, args, data) -> dict:
    config = make_config(lookback, remat_block, args.learners, args.data_dir)
    program = hg.build_program(config, data)
    state, shared = program.init(None)
    compiled = program.chunk.lower(state, shared).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    seconds = math.nan
    if args.time and temp <= args.max_run_gib * 2**30:
        jax.block_until_ready(compiled(state, shared))  # warm
        t0 = now()
        jax.block_until_ready(compiled(state, shared))
        seconds = now() - t0
    return {"temp_mib": temp / 2**20, "seconds": seconds}


def main(argv=None):
    args = parse_args(argv)
    lookbacks = [int(x) for x in args.lookbacks.split(",")]
    blocks = [int(x) for x in args.blocks.split(",")]
    data = hg.load_data(make_config(lookbacks[0], 0, args.learners, args.data_dir))
    inputs = math.prod(data["x_train"].shape[1:])
    print(f"# jax {jax.__version__}, {jax.devices()[0].platform}, {data['source']} "
          f"{data['x_train'].shape[1:]}: MLP {inputs}-50-10, batch 50, {args.learners} "
          f"learner(s), one chunk = lookback steps + 1 hyperparameter step")
    print(f"{'lookback':>9} {'remat_block':>12} {'states kept':>12} {'temp MiB':>10} "
          f"{'s / chunk':>10}")
    results = {}
    for lookback in lookbacks:
        for block in blocks:
            r = measure(lookback, block, args, data)
            results[lookback, block] = r
            b = math.ceil(math.sqrt(lookback)) if block <= 0 else block
            kept = lookback if b == 1 else lookback // b + b
            print(f"{lookback:>9} {block:>12} {kept:>12} {r['temp_mib']:>10.1f} "
                  f"{r['seconds']:>10.2f}", flush=True)
    top = lookbacks[-1]
    one, two = results.get((top, 1)), results.get((top, 0))
    if one and two:
        print(f"hypergrad_memory lookback={top} one_level_mib={one['temp_mib']:.1f} "
              f"two_level_mib={two['temp_mib']:.1f} "
              f"ratio={one['temp_mib'] / two['temp_mib']:.1f} "
              f"time_ratio={two['seconds'] / one['seconds']:.2f}")


if __name__ == "__main__":
    main()
