r"""Benchmark: what the hypergrad family costs over plain training, and 200 initialisations of
plain training vmapped vs one after another (PyTorch, the reference's way, and a Python loop of
the jitted single run).

Run::

    python benchmarks/hypergrad_cost.py                  # timings + the compare table (200 inits)
    python benchmarks/hypergrad_cost.py --no-compare     # the timings only
    python benchmarks/hypergrad_cost.py --compare_inits=20   # a shorter compare table

Workload (``configs/hypergrad/uci.py``, the embedded default data set): scikit-learn's diabetes
(442 x 10; 318 train / 80 validation / 44 test rows, or 398 train rows without a validation
split), MLP [10, 50, 1] ReLU with torch's initialisation, MSE on normalised targets, full batch,
SGD with momentum and coupled weight decay (``irmx.hypergrad.rule``), 4000 network steps = 400
hyperparameter steps of T = 10, a logged point (full train / val / test losses) every 10 steps.
Initialisations: ``config.num_inits`` draws of the paper's ``natural_sgd_generator`` ranges (lr
log-uniform in [1e-6, 0.1], weight decay log-uniform in [1e-7, 0.01], momentum uniform in
[0, 1]) with their own network init, the same draws in every program of a run.

Printed, in one process:

1. **Ours over plain** (``--inits`` = 20 learners, one vmapped program each): the
   ``ours_hdlr_momentum`` program (one learning rate per weight + weight decay + momentum, IFT
   hypergradient with 5 Neumann terms after every 10 steps, Adam 0.05) over the ``random``
   program (fixed hyperparameters = plain training; no validation split, so it trains on 398
   rows), the same initialisations and 4000 network steps. Each run is the runner's loop
   (``irmx.experiments.loop._train`` without files): 400 ``program.chunk`` calls, the chunk's
   metrics fetched to the host after each; compilation is excluded (one chunk is run first),
   the result is blocked on. Min and median of ``--repeats``. A third row times ``random`` on
   the 318-row split of Ours (``algorithm.val_fraction = -1``: Random_Validation), the
   like-for-like cost: the same model, rows and steps. X = ours / that row (target <= 2; the
   paper reports 2-3x); ours / random on 398 rows is printed beside it.
2. **200 initialisations of plain training** (``random``, ``--num_learners`` = 200) as one
   program with ``learners_per_group`` = each of ``--group_sizes`` (0 = one vmap of all 200,
   G = ``lax.map`` over groups of G vmapped learners), each run fully once (warm); vs the
   reference's way, a PyTorch loop of runs one after another (``nn.Linear`` MLP 10-50-1 with
   irmx's initial weights, ``torch.optim.SGD(lr, momentum, weight_decay)`` with each run's own
   sampled values, full batch, 4000 steps, the train / val / test losses computed every 10 steps
   under ``no_grad`` and read with ``.item()`` as the program logs them; torch's default
   threads); and vs a Python loop of the jitted single run (the same program's chunk on a
   learner axis of size 1, compiled once, 400 calls per run). The torch and jitted loops are
   timed on the first ``--subset`` (20) runs and scaled linearly to 200 (the output says so).
   Y = torch / best vmapped, Z = loop / best vmapped (best over the group sizes).
3. With ``--compare`` (the default): ``configs/hypergrad/uci.py:compare`` with ``num_inits =
   --compare_inits`` (200) through ``irmx.experiments.hypergrad.run`` in a temporary workdir:
   every algorithm of the paper's Table 2 (BayesOpt too) on the same initialisations, its table
   and how long it took.

The last line is machine-readable::

    hypergrad ours_over_plain=X vs_torch=Y vs_loop=Z

(nan for Y when torch is not installed or ``--no_torch``). Last numbers: ``benchmarks/README.md``.
"""

import argparse
import os
import platform
import statistics
import tempfile

import jax
import numpy as np
from learner_groups import now  # the benchmarks' shared timing helper (script dir on sys.path)

from irmx.configs.hypergrad import uci
from irmx.experiments import hypergrad as hg

try:
    import torch
except ImportError:  # the torch comparison is optional
    torch = None


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--inits", type=int, default=20, help="learners of part 1 (ours vs plain)")
    p.add_argument("--repeats", type=int, default=3, help="warm runs per program in part 1")
    p.add_argument("--num_learners", type=int, default=200, help="initialisations of part 2")
    p.add_argument("--group_sizes", default="0,10,20,40",
                   help="learners_per_group values of part 2 (0: one vmap of all)")
    p.add_argument("--subset", type=int, default=20,
                   help="runs the torch and jitted loops time (scaled to --num_learners)")
    p.add_argument("--hyper_steps", type=int, default=0,
                   help="hyperparameter steps of T = 10 (0: the config's 400 = 4000 steps)")
    p.add_argument("--no_torch", action="store_true", help="skip the PyTorch loop")
    p.add_argument("--compare", action=argparse.BooleanOptionalAction, default=True,
                   help="also train configs/hypergrad/uci.py:compare and print its table")
    p.add_argument("--compare_inits", type=int, default=200,
                   help="initialisations of the compare table")
    return p.parse_args(argv)


def make_config(variant: str, num_inits: int, hyper_steps: int = 0, group: int = 0, **algo):
    c = uci.get_config(variant)
    c.num_inits = num_inits
    c.learners_per_group = group
    if hyper_steps:
        c.algorithm.hyper_steps = hyper_steps
    for k, v in algo.items():
        c.algorithm[k] = v
    return c


# ---------------------------------------------------------------------------------- timing


def run_chunks(program, state, data):
    """The runner's training loop without its files: every chunk, metrics to the host."""
    metrics = None
    for _ in range(program.num_steps // program.chunk_steps):
        state, metrics = program.chunk(state, data)
        metrics = jax.device_get(metrics)
    return jax.block_until_ready(state), metrics


def time_program(program, repeats: int, coords=None) -> dict:
    """Warm-up (compile + one chunk), then ``repeats`` full runs from the initial state."""
    t0 = now()
    state, data = program.init(coords)
    jax.block_until_ready(program.chunk(state, data))
    cold = now() - t0
    times, metrics = [], None
    for _ in range(repeats):
        t0 = now()
        _, metrics = run_chunks(program, state, data)
        times.append(now() - t0)
    return {"warm": min(times), "median": statistics.median(times), "compile": cold,
            "metrics": metrics, "data": data, "state": state}


def time_jitted_loop(program, k: int) -> dict:
    """The same program's chunk on a learner axis of size 1 (compiled once), run after run."""
    coords = program.axis.numeric_coords()
    one = lambda i: {n: v[i:i + 1] for n, v in coords.items()}
    t0 = now()
    state, data = program.init(one(0))
    jax.block_until_ready(program.chunk(state, data))
    cold = now() - t0
    losses = []
    t0 = now()
    for i in range(k):
        state, data = program.init(one(i))
        _, metrics = run_chunks(program, state, data)
        losses.append(float(metrics["train_loss"][0]))
    return {"measured": now() - t0, "compile": cold, "loss": np.array(losses)}


def torch_run(data, w1, b1, w2, b2, lr, wd, mom, steps, every):
    """One plain run the reference's way; the last logged train loss."""
    x, y, xv, yv, xt, yt = data
    net = torch.nn.Sequential(torch.nn.Linear(w1.shape[1], w1.shape[0]), torch.nn.ReLU(),
                              torch.nn.Linear(w2.shape[1], w2.shape[0]))
    with torch.no_grad():
        for p, v in zip(net.parameters(), (w1, b1, w2, b2)):
            p.copy_(v)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=mom, weight_decay=wd)
    last = float("nan")
    for step in range(1, steps + 1):
        opt.zero_grad(set_to_none=True)
        loss = torch.mean((net(x)[:, 0] - y) ** 2)
        loss.backward()
        opt.step()
        if step % every == 0:
            with torch.no_grad():
                last = torch.mean((net(x)[:, 0] - y) ** 2).item()
                torch.mean((net(xv)[:, 0] - yv) ** 2).item()
                torch.mean((net(xt)[:, 0] - yt) ** 2).item()
    return last


def time_torch(program, state, data, k: int, every: int) -> dict:
    tensor = lambda a: torch.from_numpy(np.array(a, np.float32, copy=True))
    d = tuple(tensor(data[n]) for n in ("x_train", "y_train", "x_val", "y_val", "x_test",
                                        "y_test"))
    p = jax.device_get(state.params)["params"]
    c = program.axis.numeric_coords()

    def args(i):
        return (tensor(p["dense1"]["kernel"][i].T), tensor(p["dense1"]["bias"][i]),
                tensor(p["head"]["kernel"][i].T), tensor(p["head"]["bias"][i]),
                float(c["initial_lr"][i]), float(c["initial_weight_decay"][i]),
                float(c["initial_momentum"][i]))

    t0 = now()
    torch_run(d, *args(0), 20, every)  # the first torch work of the process: warm-up
    warmup = now() - t0
    t0 = now()
    losses = [torch_run(d, *args(i), program.num_steps, every) for i in range(k)]
    return {"measured": now() - t0, "warmup": warmup, "loss": np.array(losses),
            "threads": torch.get_num_threads()}


# ---------------------------------------------------------------------------------- parts


def part_overhead(args) -> float:
    print(f"\n== 1. Ours (WD+HDLR+M) over plain training: {args.inits} initialisations, "
          f"one vmapped program each ==")
    progs = {
        "ours_hdlr_momentum": hg.build_program(make_config(
            "ours_hdlr_momentum", args.inits, args.hyper_steps)),
        "random (plain, 398 train rows)": hg.build_program(make_config(
            "random", args.inits, args.hyper_steps)),
        "random on Ours' 318-row split": hg.build_program(make_config(
            "random", args.inits, args.hyper_steps, val_fraction=-1.0)),
    }
    coords = [p.axis.numeric_coords() for p in progs.values()]
    same = all(np.array_equal(coords[0][n], c[n]) for c in coords[1:] for n in coords[0])
    steps = next(iter(progs.values())).num_steps
    res = {name: time_program(p, args.repeats) for name, p in progs.items()}
    plain = res["random (plain, 398 train rows)"]["warm"]
    print(f"same initialisations (seed, lr, weight decay, momentum) in all three: {same}; "
          f"{steps} network steps, {steps // 10} chunks of 10 (a hyperparameter step and a "
          f"logged point each), warm = min of {args.repeats}")
    print(f"{'program':<34}{'warm min':>10}{'median':>9}{'compile+1 chunk':>17}"
          f"{'us/learner-step':>17}{'vs plain':>10}")
    for name, r in res.items():
        print(f"{name:<34}{r['warm']:>9.3f}s{r['median']:>8.3f}s{r['compile']:>16.2f}s"
              f"{r['warm'] / (args.inits * steps) * 1e6:>17.2f}{r['warm'] / plain:>9.2f}x")
    ours = res["ours_hdlr_momentum"]
    m = ours["metrics"]
    ok = ~np.asarray(m["diverged"], bool)
    print(f"ours at the end: mean final train loss {np.mean(m['train_loss'][ok]):.4f}, val "
          f"{np.mean(m['val_loss'][ok]):.4f} (over the {int(ok.sum())} learners that did not "
          f"diverge), diverged {int((~ok).sum())}")
    like = res["random on Ours' 318-row split"]["warm"]
    print(f"ours / plain on the same 318 rows (X): {ours['warm'] / like:.2f}x; ours / plain on "
          f"398 rows: {ours['warm'] / plain:.2f}x")
    return ours["warm"] / like


def part_vmapped(args):
    n, k = args.num_learners, min(args.subset, args.num_learners)
    groups = [int(g) for g in args.group_sizes.split(",")]
    print(f"\n== 2. {n} initialisations of plain training (random): vmapped vs one after "
          f"another ==")
    res, base = {}, None
    for g in groups:
        p = hg.build_program(make_config("random", n, args.hyper_steps, group=g))
        base = base or p
        res[g] = time_program(p, 1)
        label = "full vmap" if g == 0 or g >= n else f"groups of {g}"
        print(f"  learners_per_group={g:<3} ({label}): warm {res[g]['warm']:.3f}s "
              f"({res[g]['warm'] / (n * p.num_steps) * 1e6:.2f} us/learner-step), compile+1 "
              f"chunk {res[g]['compile']:.2f}s", flush=True)
    best_g = min(res, key=lambda g: res[g]["warm"])
    best = res[best_g]["warm"]
    ref = res[groups[0]]
    loop = time_jitted_loop(base, k)
    loop_s = loop["measured"] * n / k
    print(f"  Python loop of the jitted single run: {loop['measured']:.3f}s for {k} runs, "
          f"SCALED to {n}: {loop_s:.2f}s (compile+1 chunk {loop['compile']:.2f}s)", flush=True)
    ref_loss = np.asarray(ref["metrics"]["train_loss"], np.float64)
    close = np.isclose(loop["loss"], ref_loss[:k], rtol=1e-4, atol=1e-6, equal_nan=True)
    print(f"    final train loss vs the vmapped run: {int(close.sum())}/{k} allclose "
          f"(rtol 1e-4)")
    torch_s = float("nan")
    if torch is None or args.no_torch:
        print("  PyTorch loop: skipped (" + ("torch not installed" if torch is None
                                             else "--no_torch") + "), vs_torch = nan")
    else:
        t = time_torch(base, ref["state"], ref["data"], k, 10)
        torch_s = t["measured"] * n / k
        print(f"  PyTorch loop (torch {torch.__version__}, {t['threads']} threads): "
              f"{t['measured']:.2f}s for {k} runs, SCALED to {n}: {torch_s:.1f}s "
              f"({t['measured'] / (k * base.num_steps) * 1e6:.1f} us/step; warm-up of 20 "
              f"steps {t['warmup']:.2f}s excluded)")
        ok = np.isfinite(t["loss"]) & np.isfinite(ref_loss[:k])
        rel = np.abs(t["loss"][ok] - ref_loss[:k][ok]) / np.maximum(np.abs(ref_loss[:k][ok]),
                                                                   1e-12)
        bad = int((~np.isfinite(t["loss"])).sum())
        print(f"    final train loss vs the vmapped run: {int((rel < 1e-3).sum())}/{ok.sum()} "
              f"finite runs within 1e-3 relative (median {np.median(rel):.1e}; chaotic runs "
              f"at high lr x momentum differ), non-finite torch {bad}, irmx diverged "
              f"{int(np.sum(ref['metrics']['diverged'][:k]))}")
    print(f"  best learners_per_group={best_g} ({best:.3f}s); all: "
          + ", ".join(f"G={g} {r['warm']:.3f}s" for g, r in res.items()))
    print(f"  torch loop / best vmapped = {torch_s / best:.2f}, jitted loop / best vmapped = "
          f"{loop_s / best:.2f} (loops timed on {k} of {n} runs, scaled linearly)")
    return torch_s / best, loop_s / best


def part_compare(args) -> None:
    c = uci.get_config("compare")
    c.num_inits = args.compare_inits
    if args.hyper_steps:
        for a in c.compare.values():  # the same network steps (Baydin: T = 1)
            a.hyper_steps = max(1, args.hyper_steps * 10 // a.interval)
    print(f"\n== 3. configs/hypergrad/uci.py:compare, num_inits={args.compare_inits}, "
          f"irmx.experiments.hypergrad.run in a temporary workdir ==", flush=True)
    t0 = now()
    with tempfile.TemporaryDirectory() as workdir:
        hg.run(c, workdir, progress=False)
    print(f"compare took {now() - t0:.1f}s (every algorithm trained; BayesOpt's rounds "
          f"included)")


def main(argv=None):
    args = parse_args(argv)
    load0 = os.getloadavg()
    t_all = now()
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}), "
          f"{'torch ' + torch.__version__ if torch is not None else 'torch not installed'}, "
          f"python {platform.python_version()}, {os.cpu_count()} CPUs, load average "
          f"{load0[0]:.1f}")
    t0 = now()
    x = part_overhead(args)
    print(f"(part 1 took {now() - t0:.1f}s)")
    t0 = now()
    y, z = part_vmapped(args)
    print(f"(part 2 took {now() - t0:.1f}s)")
    if args.compare:
        part_compare(args)
    print(f"\ntotal {now() - t_all:.1f}s, load average {load0[0]:.1f} -> "
          f"{os.getloadavg()[0]:.1f}")
    print(f"hypergrad ours_over_plain={x:.2f} vs_torch={y:.2f} vs_loop={z:.2f}")


if __name__ == "__main__":
    main()
