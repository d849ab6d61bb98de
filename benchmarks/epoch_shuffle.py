r"""Benchmark: picking a training step's batch of an epoch's shuffle, by sorting the whole
permutation each step (``jax.random.permutation``, what irmx did) vs computing only the batch's
entries (``irmx.rng.epoch_batch``, a keyed Feistel permutation).

Run::

    python benchmarks/epoch_shuffle.py                     # n = 1797, 50000; 1000 steps
    python benchmarks/epoch_shuffle.py --sizes=60000 --learners=8

Workload: ``--steps`` SGD steps of an MLP 784-50-10 (batch 50, the hypergrad Fashion-MNIST
network) on ``n`` random 784-dimensional points with labels, as one jitted ``lax.scan``, with
``--learners`` vmapped learners (each its own shuffle key), for each ``n`` of ``--sizes``. Both
columns do the same training work; only the batch indices differ. Printed: ms per step of each
(min of 3 warm runs) and their ratio; the last line is
``epoch_shuffle n=N permutation_ms=A feistel_ms=B speedup=A/B`` for the largest n.
"""

import argparse

import jax
import jax.numpy as jnp
import optax
from learner_groups import now  # the benchmarks' shared timing helper (script dir on sys.path)

from irmx import rng
from irmx.nets.classifiers import make_classifier


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1797,50000", help="training set sizes, comma-separated")
    p.add_argument("--steps", type=int, default=1000, help="steps per timed scan")
    p.add_argument("--batch_size", type=int, default=50)
    p.add_argument("--learners", type=int, default=1, help="vmapped learners")
    return p.parse_args(argv)


def permutation_batch(key, step, spe, bs, n):
    """The old way: sort all n indices, slice the step's batch."""
    perm = jax.random.permutation(jax.random.fold_in(key, step // spe), n)
    return jax.lax.dynamic_slice_in_dim(perm, (step % spe) * bs, bs)


def make_run(n, args, pick):
    model = make_classifier("mlp_50", 10)
    x = jax.random.normal(jax.random.key(0), (n, 784))
    y = jax.random.randint(jax.random.key(1), (n,), 0, 10)
    opt = optax.sgd(0.01, momentum=0.9)
    spe = n // args.batch_size

    def loss(params, idx):
        logits = model.apply(params, x[idx])
        return optax.softmax_cross_entropy_with_integer_labels(logits, y[idx]).mean()

    def train(key):
        params = model.init(jax.random.fold_in(key, 1), x[:1])
        state = (params, opt.init(params))

        def step(state, s):
            params, opt_state = state
            idx = pick(key, s, spe, args.batch_size, n)
            g = jax.grad(loss)(params, idx)
            updates, opt_state = opt.update(g, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), None

        state, _ = jax.lax.scan(step, state, jnp.arange(args.steps))
        return state[0]

    keys = jax.random.split(jax.random.key(2), args.learners)
    run = jax.jit(jax.vmap(train))
    return lambda: jax.block_until_ready(run(keys))


def time_ms(fn, steps) -> float:
    fn()  # compile + warm
    best = float("inf")
    for _ in range(3):
        t0 = now()
        fn()
        best = min(best, now() - t0)
    return best / steps * 1e3


def main(argv=None):
    args = parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"# jax {jax.__version__}, {jax.devices()[0].platform}: MLP 784-50-10, batch "
          f"{args.batch_size}, {args.learners} learner(s), {args.steps} steps per scan")
    print(f"{'n':>7} {'permutation ms/step':>20} {'epoch_batch ms/step':>20} {'speedup':>8}")
    for n in sizes:
        a = time_ms(make_run(n, args, permutation_batch), args.steps)
        b = time_ms(make_run(n, args, rng.epoch_batch), args.steps)
        print(f"{n:>7} {a:>20.3f} {b:>20.3f} {a / b:>8.1f}", flush=True)
    print(f"epoch_shuffle n={n} permutation_ms={a:.3f} feistel_ms={b:.3f} speedup={a / b:.1f}")


if __name__ == "__main__":
    main()
