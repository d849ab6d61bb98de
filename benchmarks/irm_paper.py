r"""Benchmark: the IRM reference's synthetic protocol (``configs/irm/regression.py:paper``),
its IRM experiment, three ways in one process.

Run::

    python benchmarks/irm_paper.py                       # 32 seeds x 6 ERM weights r
    python benchmarks/irm_paper.py --num_seeds=4 --num_steps=500   # quick check

What is measured (FEU, 2 training environments of 1000 samples, x Phi w, Adam lr 1e-3, the
reference's vector-dummy penalty, r in {0, 1e-5, ..., 1e-1} vmapped: 6 learners per seed):

1. **irmx compressed** (the paper variant's default, ``data.compress=True``): each environment
   replaced by its exact 11-row least-squares stand-in (``irmx.data.sem.compress_environment``),
   one ``jit(vmap(lax.scan))`` over all learners; warm time of ``--num_steps`` steps (median of
   ``--repeats``) after one compiling call.
2. **irmx full data** (``data.compress=False``): the same program on the 1000-sample
   environments.
3. **PyTorch reference loop** (when torch is installed): the reference's training loop as its
   models.py writes it (``torch.optim.Adam([phi])``, per-environment ``MSELoss``, penalty from
   ``torch.autograd.grad(error_e, w, create_graph=True)``), one learner after another, on
   irmx's data; timed on ``--torch_learners`` learners and scaled to all of them.

The final parameters of (1) and (2) are compared (same init, same data up to the exact
compression): the max relative difference of the selected solutions is printed. The last line
is machine-readable::

    speedup compressed_vs_full=X compressed_vs_torch=Y

Full 100000-step protocol time = warm time x 100000 / num_steps (printed).
"""

import argparse
import statistics
import time

import jax
import numpy as np

from irmx.configs.irm.regression import get_config
from irmx.experiments import irm


def _program(num_seeds, num_steps, compress):
    c = irm.experiment_config(get_config("paper"), "irm")
    c.num_seeds = num_seeds
    c.num_steps = c.chunk_steps = c.checkpoint_every = num_steps
    c.data.compress = compress
    return irm.build_program(c)


def time_irmx(num_seeds, num_steps, compress, repeats):
    program = _program(num_seeds, num_steps, compress)
    state0, data = program.init()
    state, _ = program.chunk(state0, data)  # compile
    jax.block_until_ready(state)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        state, _ = program.chunk(state0, data)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t)
    solution = np.asarray(program.evaluate(state, data)["solution"])
    return statistics.median(times), program.axis.size, solution, data


def time_torch(data, num_steps, learners, weights):
    import torch

    torch.set_num_threads(1)  # as the reference does (main.py)
    x_all, y_all = (np.asarray(a) for a in jax.device_get(data["train"]))
    start = time.perf_counter()
    for n in range(learners):
        envs = [(torch.tensor(x_all[n, e]), torch.tensor(y_all[n, e])[:, None])
                for e in range(x_all.shape[1])]
        reg = float(weights[n % len(weights)])
        dim = envs[0][0].shape[1]
        phi = torch.nn.Parameter(torch.eye(dim))
        w = torch.ones(dim, 1, requires_grad=True)
        opt = torch.optim.Adam([phi], lr=1e-3)
        loss = torch.nn.MSELoss()
        for _ in range(num_steps):
            penalty = error = 0
            for x_e, y_e in envs:
                error_e = loss(x_e @ phi @ w, y_e)
                penalty += torch.autograd.grad(error_e, w, create_graph=True)[0].pow(2).mean()
                error += error_e
            opt.zero_grad()
            (reg * error + (1 - reg) * penalty).backward()
            opt.step()
    return time.perf_counter() - start


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num_seeds", type=int, default=32)
    p.add_argument("--num_steps", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--torch_learners", type=int, default=2)
    a = p.parse_args()

    t_c, n, sol_c, _ = time_irmx(a.num_seeds, a.num_steps, True, a.repeats)
    t_f, _, sol_f, data_full = time_irmx(a.num_seeds, a.num_steps, False, a.repeats)
    scale = 100000 / a.num_steps
    print(f"learners {n} ({a.num_seeds} seeds x 6 ERM weights r), {a.num_steps} steps")
    print(f"irmx compressed  warm {t_c:.3f} s ({1e6 * t_c / (n * a.num_steps):.3f} "
          f"us/learner-step); 100000 steps ~ {t_c * scale:.0f} s")
    print(f"irmx full data   warm {t_f:.3f} s ({1e6 * t_f / (n * a.num_steps):.3f} "
          f"us/learner-step); 100000 steps ~ {t_f * scale:.0f} s")
    diff = np.max(np.abs(sol_c - sol_f)) / np.max(np.abs(sol_f))
    print(f"solutions compressed vs full: max relative difference {diff:.2e}")
    line = f"speedup compressed_vs_full={t_f / t_c:.1f}"
    try:
        import torch  # noqa: F401
    except ImportError:
        print("torch not installed: no PyTorch reference loop")
    else:
        weights = get_config("paper").study.irm.vmapped.erm_weight
        k = min(a.torch_learners, n)
        t_t = time_torch(data_full, a.num_steps, k, weights) * n / k
        print(f"torch reference  {t_t:.1f} s for all {n} learners (timed {k}, scaled); "
              f"100000 steps ~ {t_t * scale / 3600:.1f} h")
        line += f" compressed_vs_torch={t_t / t_c:.0f}"
    print(line)


if __name__ == "__main__":
    main()
