r"""Benchmark: a learner axis fully vmapped, in groups of G, as a Python loop, and in PyTorch.

Run::

    python benchmarks/learner_groups.py            # 200 learners x 400 steps (9-12 min measured
                                                   # on 2 cores under load 7-11; ~2 min idle, est.)
    python benchmarks/learner_groups.py --smoke    # 10 learners x 20 steps, ~30-45 s

Workload (the hypergrad family's UCI MLP): a synthetic UCI-like regression set, 692 x 8
standardized inputs and 1 standardized output from a fixed numpy generator (nothing is
downloaded), an MLP 8-50-1 (flax.linen, ReLU), MSE, plain SGD
(``irmx.optim.make_optimizer("sgd", lr)``, the learning rate injected per learner), 400
full-batch steps as one ``irmx.train.make_chunk(make_step(make_update(loss, opt)), 400)``.
The learner axis: ``--num_learners`` (200) learners, learner i with its own init seed
(``irmx.rng.stream(seed + i, "init")``) and a learning rate drawn log-uniform from
``--lr_range`` (``irmx.learners.sample_values``). The data is shared (``in_axes=(0, None)``).

Timed side by side in one process, each *cold* (ahead-of-time lower + compile + the first call:
what a fresh run pays) and *warm* (the compiled program again; min and median of
``--repeats``):

* ``vmapped``: ``jit(map_learners(chunk, (0, None), 0))``, all N learners in one vmap (G = N);
* ``groups G``: ``jit(map_learners(chunk, (0, None), G))``, ``jax.lax.map(..., batch_size=G)``:
  vmap within groups of G learners, a loop across groups (configs: ``learners_per_group``);
* ``loop``: a Python loop over learners of the jitted single-learner chunk (G = 1, N calls);
* ``torch``: ``nn.Sequential(Linear, ReLU, Linear)`` + ``torch.optim.SGD``, learner after
  learner from the same initial weights (skipped when torch is not installed). Cold = the
  first torch work of the process (a warm-up learner) + the loop; the loop is cut short after
  ``--torch_max_seconds`` and scaled by N / k (the output says so).

Why groups can win on CPU: the vmapped step's activations are N x 692 x 50 floats (27 MB at
N = 200, several times that with the backward pass) and fall out of cache; a group of G keeps
its working set in cache at the price of a loop of N / G iterations. On a GPU the same knob
keeps a large axis within device memory: size G from the compiled program's
``memory_analysis()`` (temp and argument bytes, printed for every program; None where the
backend gives none).

Agreement: every variant's last-step training loss per learner is compared with the vmapped
one (allclose, float32 rounding: XLA batches reductions differently, torch has its own kernels):
about 5e-7 relative at the default learning rates. (Above lr ~0.08 a few learners sit at the edge
of stability, where a 1-ulp difference grows to ~1e-3 within 400 steps; from ~0.19 SGD
diverges: hence ``--lr_range`` 0.001..0.05.)

The last line is machine-readable::

    best_group_size=G vmapped_over_best=R loop_over_best=R torch_over_best=R

G = the group size (of map_learners, G = N being the full vmap) with the lowest warm time;
each R = that variant's warm time / the best warm time (nan when torch is absent).

Last numbers: ``benchmarks/README.md``.
"""

import argparse
import os
import platform
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from irmx import learners, optim, rng
from irmx import train as irmx_train

try:
    import torch
except ImportError:  # the torch comparison is optional
    torch = None

RTOL_JAX, ATOL_JAX = 1e-4, 1e-6  # float32 rounding after 400 steps (vmapped vs grouped vs loop)
RTOL_TORCH, ATOL_TORCH = 1e-3, 1e-5  # torch's kernels round differently again


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num_learners", type=int, default=200)
    p.add_argument("--steps", type=int, default=400, help="full-batch SGD steps per learner")
    p.add_argument("--repeats", type=int, default=1, help="warm runs per variant (min, median)")
    p.add_argument("--group_sizes", default="1,2,5,10,25,50",
                   help="comma-separated G for map_learners (those >= N are skipped)")
    p.add_argument("--num_samples", type=int, default=692)
    p.add_argument("--num_features", type=int, default=8)
    p.add_argument("--hidden", type=int, default=50)
    p.add_argument("--lr_range", default="0.001,0.05",
                   help="low,high of the log-uniform draws (from lr ~0.08 float32 rounding grows "
                        "to 1e-3 in 400 steps, from ~0.19 SGD diverges)")
    p.add_argument("--seed", type=int, default=0, help="learner i has seed + i")
    p.add_argument("--torch_max_seconds", type=float, default=20.0,
                   help="time about this long in torch at most, then extrapolate over learners")
    p.add_argument("--no_torch", action="store_true", help="skip the PyTorch baseline")
    p.add_argument("--torch_threads", type=int, default=1,
                   help="torch intra-op threads (1: these matmuls are too small to split, and "
                        "spinning OpenMP threads slow torch down 10x under load)")
    p.add_argument("--smoke", action="store_true",
                   help="10 learners x 20 steps, 1 repeat, groups 2,5 (seconds)")
    args = p.parse_args(argv)
    if args.smoke:  # shrinks the options left at their defaults
        smoke = dict(num_learners=10, steps=20, repeats=1, group_sizes="2,5", torch_max_seconds=5.0)
        for name, value in smoke.items():
            if getattr(args, name) == p.get_default(name):
                setattr(args, name, value)
    return args


# -------------------------------------------------------------------------------- workload


def make_data(num_samples: int, num_features: int, seed: int = 0):
    """A UCI-like regression set: correlated inputs, a smooth nonlinear target plus noise, both
    standardized (float32). Fixed numpy generator: the same numbers on every machine."""
    g = np.random.default_rng(seed)
    mix = g.normal(size=(num_features, num_features)) / np.sqrt(num_features)
    x = g.normal(size=(num_samples, num_features)) @ (np.eye(num_features) + mix)
    w1, w2 = g.normal(size=num_features), g.normal(size=num_features)
    y = np.sin(x @ w1 / 2) + 0.3 * (x @ w2) + 0.1 * (x[:, 0] * x[:, 1])
    y = y + 0.2 * g.normal(size=num_samples)
    x = (x - x.mean(0)) / x.std(0)
    y = (y - y.mean()) / y.std()
    return x.astype(np.float32), y[:, None].astype(np.float32)


class MLP(nn.Module):
    hidden: int = 50

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Dense(self.hidden)(x))  # Dense_0 (built first), then Dense_1
        return nn.Dense(1)(h)


def build(args, x):
    """(single-learner chunk, vmapped initial state_N, learning rates, model)."""
    model = MLP(args.hidden)
    low, high = (float(v) for v in args.lr_range.split(","))
    lrs = learners.sample_values(args.seed, "lr", (low, high, "log"), args.num_learners)
    opt = optim.make_optimizer("sgd", low)

    def loss(params, model_state, batch, key, values):
        del model_state, key, values
        xb, yb = batch
        return jnp.mean((model.apply(params, xb) - yb) ** 2), {}

    update = irmx_train.make_update(loss, opt, hyperparams=("learning_rate",))
    chunk = irmx_train.make_chunk(irmx_train.make_step(update), args.steps)

    def init_one(seed, lr):
        params = model.init(rng.stream(seed, "init"), x[:1])
        return irmx_train.init_state(params, opt, rng.stream(seed, "step"),
                                     {"learning_rate": lr}, hyperparams=("learning_rate",))

    seeds = jnp.arange(args.num_learners, dtype=jnp.uint32) + args.seed
    state_N = jax.block_until_ready(
        jax.jit(jax.vmap(init_one))(seeds, jnp.asarray(lrs, jnp.float32)))
    return chunk, state_N, lrs, model


# ---------------------------------------------------------------------------------- timing


def now():
    return time.perf_counter()


def memory(compiled) -> dict:
    """XLA's buffer assignment of a compiled program (bytes), or {} where the backend has none."""
    try:
        mem = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 -- some backends raise instead of returning None
        mem = None
    if mem is None:
        return {}
    out = {}
    for name in ("temp", "argument", "output", "alias", "generated_code"):
        value = getattr(mem, f"{name}_size_in_bytes", None)
        if value is not None:
            out[name] = int(value)
    return out


def time_program(fn, args, repeats: int) -> dict:
    """Cold (lower + compile + first call) and warm (min / median of ``repeats``) of jit(fn)."""
    t0 = now()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = now() - t0
    out = jax.block_until_ready(compiled(*args))
    cold = now() - t0
    warm = []
    for _ in range(repeats):
        t0 = now()
        jax.block_until_ready(compiled(*args))
        warm.append(now() - t0)
    return {"cold": cold, "compile": compile_s, "warm": min(warm),
            "median": statistics.median(warm), "mem": memory(compiled),
            "loss": np.asarray(out[1]["loss"]), "diverged": np.asarray(out[1]["diverged"])}


def time_loop(chunk, state_N, data, repeats: int) -> dict:
    """A Python loop over learners of the jitted 1-learner chunk (inputs sliced beforehand)."""
    n = jax.tree.leaves(state_N)[0].shape[0]
    states = [jax.tree.map(lambda a, i=i: a[i], state_N) for i in range(n)]
    jax.block_until_ready(states)
    t0 = now()
    compiled = jax.jit(chunk).lower(states[0], data).compile()

    def run():
        outs = [compiled(s, data) for s in states]
        return jax.block_until_ready(outs)

    outs = run()
    cold = now() - t0
    warm = []
    for _ in range(repeats):
        t0 = now()
        run()
        warm.append(now() - t0)
    return {"cold": cold, "warm": min(warm), "median": statistics.median(warm),
            "mem": memory(compiled), "loss": np.array([float(o[1]["loss"]) for o in outs])}


def torch_train_one(x, y, w1, b1, w2, b2, lr, steps):
    """One learner, the usual PyTorch way; returns the last step's loss (before its update)."""
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], w1.shape[0]), torch.nn.ReLU(),
                              torch.nn.Linear(w1.shape[0], 1))
    with torch.no_grad():
        for p, v in zip(net.parameters(), (w1, b1, w2, b2)):
            p.copy_(v)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    loss = None
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = torch.mean((net(x) - y) ** 2)
        loss.backward()
        opt.step()
    return float(loss.detach())


def time_torch(x, y, state_N, lrs, steps, max_seconds: float) -> dict:
    p = jax.device_get(state_N.params)["params"]
    tensor = lambda a: torch.from_numpy(np.array(a, np.float32, copy=True))
    xt, yt = tensor(x), tensor(y)
    n = len(lrs)
    inits = [(tensor(p["Dense_0"]["kernel"][i].T), tensor(p["Dense_0"]["bias"][i]),
              tensor(p["Dense_1"]["kernel"][i].T), tensor(p["Dense_1"]["bias"][i]))
             for i in range(n)]
    t0 = now()
    torch_train_one(xt, yt, *inits[0], float(lrs[0]), steps)  # first torch work: warm-up
    warmup = now() - t0
    losses, times = [], []
    for i in range(n):
        t0 = now()
        losses.append(torch_train_one(xt, yt, *inits[i], float(lrs[i]), steps))
        times.append(now() - t0)
        if i + 1 < n and sum(times) * (i + 2) / (i + 1) > max_seconds:
            break  # the next learner would pass the budget: extrapolate from those so far
    timed = len(times)
    warm = sum(times) * n / timed
    return {"warm": warm, "median": warm, "cold": warmup + warm, "timed": timed,
            "measured": sum(times), "loss": np.array(losses), "mem": {},
            "threads": torch.get_num_threads()}


# ---------------------------------------------------------------------------------- report


def mib(nbytes):
    return "-" if nbytes is None else f"{nbytes / 2**20:.1f}"


def main(argv=None):
    args = parse_args(argv)
    n = args.num_learners
    groups = [g for g in (int(v) for v in args.group_sizes.split(",")) if 0 < g < n]
    load0 = os.getloadavg()
    x, y = make_data(args.num_samples, args.num_features)
    data = (jnp.asarray(x), jnp.asarray(y))
    chunk, state_N, lrs, _ = build(args, x)

    rows = {}  # label -> (group size, result)
    rows[f"vmapped (G={n})"] = (n, time_program(
        learners.map_learners(chunk, (0, None), 0), (state_N, data), args.repeats))
    for g in groups:
        rows[f"groups G={g}"] = (g, time_program(
            learners.map_learners(chunk, (0, None), g), (state_N, data), args.repeats))
    rows["loop of jitted (G=1, N calls)"] = (1, time_loop(chunk, state_N, data, args.repeats))
    torch_note = "torch not installed" if torch is None else "torch skipped (--no_torch)"
    t = None
    if torch is not None and not args.no_torch:
        torch.set_num_threads(args.torch_threads)
        t = time_torch(x, y, state_N, lrs, args.steps, args.torch_max_seconds)
        rows["torch loop (G=1)"] = (1, t)
        torch_note = f"torch {torch.__version__} ({t['threads']} threads)"
    load1 = os.getloadavg()

    vm = rows[f"vmapped (G={n})"][1]
    grouped = {g: r for label, (g, r) in rows.items() if label.startswith(("vmapped", "groups"))}
    best_g = min(grouped, key=lambda g: grouped[g]["warm"])
    best = grouped[best_g]["warm"]
    learner_steps = n * args.steps

    print(f"\nLearner groups: {n} learners (own init seed, lr log-uniform in {args.lr_range}) x "
          f"{args.steps} full-batch SGD steps, MLP {args.num_features}-{args.hidden}-1 on "
          f"{args.num_samples} x {args.num_features} synthetic regression data")
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}), {torch_note}, "
          f"python {platform.python_version()}, {os.cpu_count()} CPUs, load average "
          f"{load0[0]:.1f} -> {load1[0]:.1f}; vmapped activations "
          f"{n * args.num_samples * args.hidden * 4 / 1e6:.1f} MB a step, per group of G: "
          f"G x {args.num_samples * args.hidden * 4 / 1e6:.2f} MB")
    print(f"\n{'variant':<32}{'G':>5}{'warm min':>10}{'median':>9}{'cold':>9}"
          f"{'us/l-step':>10}{'vs best':>9}{'temp MiB':>10}{'arg MiB':>9}")
    for label, (g, r) in rows.items():
        print(f"{label:<32}{g:>5}{r['warm']:>9.3f}s{r['median']:>8.3f}s{r['cold']:>8.2f}s"
              f"{r['warm'] / learner_steps * 1e6:>10.2f}{r['warm'] / best:>8.2f}x"
              f"{mib(r['mem'].get('temp')):>10}{mib(r['mem'].get('argument')):>9}")
    if t is not None and t["timed"] < n:
        print(f"  torch EXTRAPOLATED: timed {t['timed']} of {n} learners ({t['measured']:.1f} s), "
              f"scaled by {n}/{t['timed']}; torch warm-up (one learner) included in cold")

    print("\nmemory_analysis() of the compiled programs (bytes; {} = none on this backend):")
    for label, g in ((f"vmapped G={n}", n), (f"best group G={best_g}", best_g)):
        print(f"  {label}: {grouped[g]['mem']}")

    print(f"\nAgreement of the last-step training loss per learner with the vmapped run "
          f"(diverged learners: {int(vm['diverged'].sum())}):")
    ref = vm["loss"]
    all_ok = True
    for label, (_, r) in rows.items():
        if label.startswith("vmapped"):
            continue
        rtol, atol = (RTOL_TORCH, ATOL_TORCH) if label.startswith("torch") else (RTOL_JAX,
                                                                                ATOL_JAX)
        k = len(r["loss"])
        close = np.isclose(r["loss"], ref[:k], rtol=rtol, atol=atol)
        ok = bool(close.all())
        all_ok &= ok
        fin = np.isfinite(ref[:k]) & np.isfinite(r["loss"])
        rel = np.max(np.abs(r["loss"] - ref[:k])[fin] / np.maximum(np.abs(ref[:k][fin]), 1e-12),
                     initial=0.0)
        print(f"  {label:<32} allclose(rtol={rtol:g}, atol={atol:g}) {ok}  max rel diff "
              f"{rel:.1e}  ({int(close.sum())}/{k} learners close)")
    print(f"  all variants agree: {all_ok}  (loss: mean {ref.mean():.4f}, min {ref.min():.4f}, "
          f"max {ref.max():.4f})")

    loop = rows["loop of jitted (G=1, N calls)"][1]["warm"]
    torch_r = t["warm"] / best if t is not None else float("nan")
    print(f"\ngroup sizes timed: {', '.join(str(g) for g in sorted(grouped))} (map_learners; "
          f"G={n} is the full vmap), loop G=1{', torch G=1' if t is not None else ''}; "
        f"best learners_per_group={best_g} "
          f"({best:.3f}s)")
    print(f"best_group_size={best_g} vmapped_over_best={vm['warm'] / best:.2f} "
          f"loop_over_best={loop / best:.2f} torch_over_best={torch_r:.2f}")


if __name__ == "__main__":
    main()
