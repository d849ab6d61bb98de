r"""Benchmark: ``irmx.io.scalars.read_scalars`` on a hypergrad-sized metrics.jsonl.

Run::

    python benchmarks/read_scalars.py                 # 200 learners x 400 logged steps
    python benchmarks/read_scalars.py --learners=32 --steps=100

The file is what the runner writes for ``configs/hypergrad/uci.py:ours_hdlr_momentum`` with
``num_inits=200`` (4000 steps, a row every 10): per row the row keys, three float64 axis
coordinates, 14 float32 scalars (as the runner writes them, ``workdir.shortest_decimals``),
two booleans and the 11 per-weight learning-rate deciles; values from a fixed numpy generator.
It is written through ``workdir.MetricsWriter`` in a temporary folder. Printed: the file size,
then min / median of ``--repeats`` reads for each parser (pyarrow's JSON reader when installed,
``json`` row by row) and that both give the same arrays. Last line::

    read_scalars rows=R arrow_s=A json_s=J          (A = nan without pyarrow)
"""

import argparse
import os
import statistics
import tempfile

import numpy as np
from learner_groups import now  # the benchmarks' shared timing helper (script dir on sys.path)

from irmx.io import workdir as wd
from irmx.io.scalars import read_scalars

SCALARS = ("hyper_val_loss", "hypergrad_norm", "loss", "lr", "momentum", "test_loss",
           "train_loss", "unnormalised_test_loss", "val_loss", "weight_decay", "lr/mean",
           "unnormalised_train_loss", "unnormalised_val_loss", "train_accuracy")


def write_file(path: str, learners: int, steps: int) -> int:
    rng = np.random.default_rng(0)
    coords = rng.uniform(size=(learners, 3))
    writer = wd.MetricsWriter(path)
    for s in range(1, steps + 1):
        f32 = lambda *shape: wd.shortest_decimals(rng.uniform(size=shape).astype(np.float32))
        values, deciles = f32(learners, len(SCALARS)), f32(learners, 11)
        rows = [{"step": 10 * s, "learner": i, "learner_id": f"{i:012x}", "cohort": "c0ffee",
                 "seed": i, "initial_lr": coords[i, 0], "initial_weight_decay": coords[i, 1],
                 "initial_momentum": coords[i, 2], "diverged": False, "hyper_skipped": False,
                 **dict(zip(SCALARS, values[i].tolist())), "lr_quantiles": deciles[i].tolist()}
                for i in range(learners)]
        writer.write(rows)
    writer.close()
    return learners * steps


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--learners", type=int, default=200)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    try:
        import pyarrow
        arrow = f"pyarrow {pyarrow.__version__}"
    except ImportError:
        arrow = None
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "metrics.jsonl")
        rows = write_file(path, args.learners, args.steps)
        print(f"{rows} rows ({args.learners} learners x {args.steps} steps), "
              f"{os.path.getsize(path) / 1e6:.1f} MB")
        times, results = {}, {}
        for name, use_arrow in (("arrow", True), ("json", False)):
            if use_arrow and arrow is None:
                print("arrow: pyarrow not installed")
                continue
            t = []
            for _ in range(args.repeats):
                t0 = now()
                results[name] = read_scalars(d, use_arrow=use_arrow)
                t.append(now() - t0)
            times[name] = min(t)
            print(f"{name + ' (' + (arrow if use_arrow else 'json') + ')':<24} min "
                  f"{min(t):.3f}s  median {statistics.median(t):.3f}s  "
                  f"val_loss {results[name]['val_loss'].shape}, lr_quantiles "
                  f"{results[name]['lr_quantiles'].shape}")
        if len(results) == 2:
            a, b = results["arrow"], results["json"]
            same = all(np.array_equal(a[k], b[k]) for k in a if k != "coords")
            print(f"both parsers give the same arrays: {same}")
    print(f"read_scalars rows={rows} arrow_s={times.get('arrow', float('nan')):.3f} "
          f"json_s={times['json']:.3f}")


if __name__ == "__main__":
    main()
