r"""Benchmark: the Jacobian operator norm of a ResNet-18-k, every way, in one process.

Run::

    python benchmarks/jacobian_norms.py                  # k=8, batch 32, K=10 and K=100
    python benchmarks/jacobian_norms.py --k=4 --batch_size=16 --repeats=2 --no_torch   # quick

Workload: ``irmx.nets.classifiers.ResNet18K(k, num_classes=K)`` (the seed's ``resnet18_k``: no
BatchNorm, PyTorch default init) on a batch of CIFAR-shaped random inputs (B x 32 x 32 x 3,
D = 3072), K = 10 and a K = 100 head; metric ``jacobian_operator_norm`` (sigma_max of each
sample's K x D input-output Jacobian of the logits, normalization none).

What is timed (warm: every function compiled; the minimum and the median of ``--repeats``
runs are printed and the minimum is used for ratios, because on a shared machine interference
only ever adds time -- and PyTorch's OpenMP threads suffer from it far more than XLA's, by 5-10x
in runs here; compile time reported apart):

* ``floor``: ``jax.vjp`` of the plain batched ``apply_fn`` once and a ``vmap`` over the K
  cotangents e_k, returning the B x K x D Jacobians and nothing else. Any exact method does at
  least this work (a forward pass and K backward passes).
* ``floor_sequential`` (for information): the same K backward passes one after the other (a
  ``lax.map``). On CPU this is *faster* than the vmapped floor: the vmap runs every convolution
  on a K*B batch whose activation gradients (500 MiB at K = 100) fall out of cache, the loop
  keeps a B-sized working set. So the "floor" bounds the FLOPs, not the wall time, and
  ``floor_over_best`` can exceed 1.
* irmx ``bigmem`` / ``per_output``: the exact Jacobian (K backward passes, vmapped / one after
  the other in a ``lax.map``) + sigma_max from the K x K Gram matrix.
* irmx ``matrix_free`` (the default for this metric above 16 outputs): block Lanczos on the
  K x K matrix J J^T (``measures.lanczos_operator_norm``: 2 start vectors, ``jax.linearize`` +
  ``jax.linear_transpose``, one transposed jvp + one jvp per Krylov vector) at the default
  tolerance (Ritz residual bound 1e-5 relative on sigma), with its iteration counts (2 vectors
  each; at most K / 2 iterations, when the Krylov space is exhausted and the result exact).
* irmx ``seed_compat``: the seed's own number (``measures.seed_operator_norm``: its 10-step power
  iteration, absolute tolerance 1e-2, on its ``J.view(N, -1, H)`` rearrangement of the explicit
  per_output Jacobian); its "err dense" column is how far the seed's number is from sigma_max.
* torch ``per_output``, the seed's way (``core/metric_helpers.py``: ``jacobian_low_mem``): a
  port of the same architecture with the same weights copied over, one forward pass with
  ``x.requires_grad_()``, K ``logits.backward(onehot_k, retain_graph=True)``, then
  ``torch.linalg.svdvals`` of the B x K x D Jacobians (the seed runs its 10-step power iteration
  on a rearrangement of them instead, the ``seed_compat`` row; svdvals is exact and no slower
  here). Run in a child process (spawned) so its memory can be measured; ``--torch_threads``
  threads (default: the number of CPU cores).

Memory: for JAX, XLA's buffer assignment of the compiled program
(``jit(f).lower(...).compile().memory_analysis()``): ``temp`` (scratch) and ``peak`` = arguments
+ outputs + temp - aliased. For torch, the growth of the child process's peak RSS
(``resource.getrusage(...).ru_maxrss``) during its first run (graph, Jacobian and SVD
workspace; includes allocator slack), so the two columns measure similar things with different
instruments: compare orders of magnitude, not digits.

Agreement: every method's sigma_max against a dense reference, ``jax.jacfwd`` per sample +
``numpy.linalg.svd`` in float64, on the first ``--dense_samples`` samples (jacfwd pushes D = 3072
tangents through the network per sample, so it is slow and kept out of the timings), and every
method against irmx ``bigmem`` on the whole batch.

The arithmetic: exact needs K backward passes (plus one forward); Lanczos needs one transposed
jvp and one jvp per Krylov vector (about two backward passes here), for as many vectors as the
batch's slowest sample needs (at most K: then the Krylov space is exhausted), so it wins only
when it stops well before K, and loses at K = 10 (where it runs K vectors, as the exact mode's
K backward passes, plus K jvps). Its memory stays independent of K.

Last numbers and what they say: ``benchmarks/README.md``.

The last line is machine-readable::

    speedup best_vs_torch_per_output=X floor_over_best=Y matrix_free_vs_bigmem_k100=Z

best = the fastest exact irmx mode (bigmem or per_output) at K = 10, named on the line before,
which also gives the default mode's time (per_output at K <= 16) relative to the floor; X = torch
per_output time / best time at K = 10; Y = floor time / best time at K = 10 (the target is
Y >= 1/1.3, best within 1.3x of the floor; Y > 1 happens on CPU, see ``floor_sequential``);
Z = bigmem time / matrix_free time at K = 100 (read the largest K given when 100 is not).
"""

import argparse
import multiprocessing as mp
import os
import platform
import resource
import statistics
import time

# Lanczos runs a LAPACK eigh of a small K x K matrix per iteration; with OpenBLAS's threads
# on a busy 2-core machine that call was measured up to 100x slower (0.46 s instead of 4 ms
# for 8 matrices of 102 x 102), so LAPACK runs single-threaded here (before numpy/jax load it).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from irmx import measures  # noqa: E402
from irmx.conv_layout import canonical_convs  # noqa: E402
from irmx.nets.classifiers import ResNet18K  # noqa: E402

METRIC = "jacobian_operator_norm"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--k", type=int, default=8, help="ResNet-18 base width")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--num_classes", default="10,100", help="comma-separated K values")
    p.add_argument("--repeats", type=int, default=5, help="timed warm runs per method")
    p.add_argument("--dense_samples", type=int, default=2, help="samples for the jacfwd reference")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no_torch", action="store_true", help="skip the PyTorch baseline")
    p.add_argument("--torch_threads", type=int, default=os.cpu_count())
    p.add_argument("--torch_max_seconds", type=float, default=60.0,
                   help="fewer timed torch repeats (at least 1) when they would take longer")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- JAX side


def _timed(fn, args, repeats):
    """(min, median) seconds of ``repeats`` warm calls."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def _compile(fn, args):
    """AOT-compile ``fn`` for ``args``: (compiled, compile seconds, memory stats in bytes)."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    seconds = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    stats = {}
    if mem is not None:
        temp = int(mem.temp_size_in_bytes)
        peak = (int(mem.argument_size_in_bytes) + int(mem.output_size_in_bytes) + temp
                - int(mem.alias_size_in_bytes))
        stats = {"temp": temp, "peak": peak}
    return compiled, seconds, stats


def floor_fn(apply_fn, sequential=False):
    """Forward once + K backward passes of the plain batched network; returns J_BxKxD.

    ``sequential=False``: the K cotangents in one vmap (the floor of the speedup line);
    ``True``: one after the other in a lax.map, with the canonical-layout kernels irmx uses in
    loops (``irmx.conv_layout``) -- the same work, a smaller working set.
    """

    def jac(params, x):
        out, vjp_fn = jax.vjp(lambda x_: apply_fn(params, x_), x)
        batch, k_out = out.shape
        cts = jnp.broadcast_to(jnp.eye(k_out, dtype=out.dtype)[:, None], (k_out, batch, k_out))
        if sequential:
            vjp_fn = canonical_convs(vjp_fn, cts[0])
            rows = jax.lax.map(lambda ct: vjp_fn(ct)[0].reshape(batch, -1), cts)
        else:
            rows = jax.vmap(lambda ct: vjp_fn(ct)[0].reshape(batch, -1))(cts)
        return jnp.swapaxes(rows, 0, 1)

    return jac


def dense_reference(apply_fn, params, x):
    """sigma_max per sample by jax.jacfwd (per sample) + numpy SVD in float64."""
    jac = jax.jit(jax.jacfwd(lambda xi: apply_fn(params, xi[None])[0]))
    out = []
    for i in range(x.shape[0]):
        j = np.asarray(jac(x[i]), np.float64).reshape(-1, x[i].size)
        out.append(np.linalg.svd(j, compute_uv=False)[0])
    return np.array(out)


def jax_methods(apply_fn):
    """name -> (fn(params, x, key) -> dict(values, converged, iterations))."""
    methods = {}
    for name, options in [
        ("bigmem", dict(mode="bigmem")),
        ("per_output", dict(mode="per_output")),
        ("matrix_free", dict(mode="matrix_free")),
        ("seed_compat", dict(mode="per_output", seed_compat=True)),
    ]:
        fn = measures.make_metric_fn(METRIC, apply_fn, **options)
        methods[name] = lambda p, x, key, fn=fn: fn(p, x, None, key)
    return methods


# --------------------------------------------------------------------------- torch side


def _torch_model(torch, k, num_classes, numpy_params):
    """A torch port of ResNet18K (no BatchNorm) carrying the flax weights (HWIO -> OIHW)."""
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, cin, planes, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=True)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=True)
            self.shortcut = None
            if stride != 1 or cin != planes:
                self.shortcut = nn.Conv2d(cin, planes, 1, stride, 0, bias=False)

        def forward(self, x):
            out = self.conv2(torch.relu(self.conv1(x)))
            identity = x if self.shortcut is None else self.shortcut(x)
            return torch.relu(out + identity)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, k, 3, 1, 1, bias=True)
            blocks, cin = {}, k
            for s in range(4):
                for b in range(2):
                    planes = k * 2**s
                    blocks[f"stage{s + 1}_block{b}"] = Block(cin, planes, 2 if s > 0 and b == 0
                                                             else 1)
                    cin = planes
            self.blocks = nn.ModuleDict(blocks)
            self.head = nn.Linear(cin, num_classes)

        def forward(self, x):
            x = torch.relu(self.stem(x))
            for block in self.blocks.values():
                x = block(x)
            return self.head(x.mean(dim=(2, 3)))

    net = Net()

    def copy_conv(conv, p):
        conv.weight.data = torch.from_numpy(np.ascontiguousarray(p["kernel"].transpose(3, 2, 0, 1)))
        if conv.bias is not None:
            conv.bias.data = torch.from_numpy(p["bias"])

    copy_conv(net.stem, numpy_params["stem"])
    for name, block in net.blocks.items():
        copy_conv(block.conv1, numpy_params[name]["conv1"])
        copy_conv(block.conv2, numpy_params[name]["conv2"])
        if block.shortcut is not None:
            copy_conv(block.shortcut, numpy_params[name]["shortcut"])
    net.head.weight.data = torch.from_numpy(np.ascontiguousarray(numpy_params["head"]["kernel"].T))
    net.head.bias.data = torch.from_numpy(numpy_params["head"]["bias"])
    return net.eval()


def torch_worker(job):
    """Child process: the seed's per-output Jacobian + svdvals, timed, with peak-RSS growth."""
    import torch

    torch.set_num_threads(job["threads"])
    net = _torch_model(torch, job["k"], job["num_classes"], job["params"])
    x_nchw = torch.from_numpy(np.ascontiguousarray(job["x"].transpose(0, 3, 1, 2)))
    batch, k_out = x_nchw.shape[0], job["num_classes"]

    def operator_norm():
        x = x_nchw.clone().requires_grad_(True)
        logits = net(x)
        jac = torch.zeros((batch, k_out) + tuple(x.shape[1:]))
        for k in range(k_out):  # the seed's jacobian_low_mem: one backward per output
            mask = torch.zeros_like(logits)
            mask[:, k] = 1.0
            logits.backward(gradient=mask, retain_graph=True)
            jac[:, k] = x.grad
            x.grad = None
        return torch.linalg.svdvals(jac.reshape(batch, k_out, -1))[:, 0]

    with torch.no_grad():
        net(x_nchw)  # touch the weights and thread pool before the baseline
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    values = operator_norm()
    cold = time.perf_counter() - t0
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    repeats = max(1, min(job["repeats"], int(job["max_seconds"] // max(cold, 1e-3))))
    for _ in range(repeats):
        t0 = time.perf_counter()
        operator_norm()
        times.append(time.perf_counter() - t0)
    return {
        "values": values.detach().numpy(),
        "time": min(times),
        "median": statistics.median(times),
        "cold": cold,
        "repeats": repeats,
        "rss_growth": (rss1 - rss0) * 1024,  # ru_maxrss is in KiB on Linux
        "version": torch.__version__,
    }


# ------------------------------------------------------------------------------- driver


def _mib(nbytes):
    return f"{nbytes / 2**20:.1f} MiB" if nbytes is not None else "n/a"


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.abs(b)))


def bench_one_k(args, k_out, torch_pool):
    model = ResNet18K(k=args.k, num_classes=k_out)
    key = jax.random.key(args.seed)
    x = jax.random.normal(jax.random.fold_in(key, 1), (args.batch_size, 32, 32, 3), jnp.float32)
    params = model.init(jax.random.fold_in(key, 2), x[:1])
    mc_key = jax.random.fold_in(key, 3)
    apply_fn = model.apply
    rows = {}

    torch_future = None
    if torch_pool is not None:
        numpy_params = jax.tree.map(np.asarray, params["params"])
        job = dict(k=args.k, num_classes=k_out, params=numpy_params, x=np.asarray(x),
                   repeats=args.repeats, threads=args.torch_threads,
                   max_seconds=args.torch_max_seconds)
        # Run torch to completion first: the two must not share the cores while timed.
        torch_future = torch_pool.apply_async(torch_worker, (job,))
        torch_result = torch_future.get()
    compiled, compile_s, mem = _compile(floor_fn(apply_fn), (params, x))
    t, med = _timed(compiled, (params, x), args.repeats)
    rows["floor"] = dict(time=t, median=med, compile=compile_s, mem=mem)
    compiled, compile_s, mem = _compile(floor_fn(apply_fn, sequential=True), (params, x))
    t, med = _timed(compiled, (params, x), args.repeats)
    rows["floor_sequential"] = dict(time=t, median=med, compile=compile_s, mem=mem)
    for name, fn in jax_methods(apply_fn).items():
        compiled, compile_s, mem = _compile(fn, (params, x, mc_key))
        t, med = _timed(compiled, (params, x, mc_key), args.repeats)
        out = jax.device_get(compiled(params, x, mc_key))
        rows[name] = dict(time=t, median=med, compile=compile_s, mem=mem, out=out)
    t0 = time.perf_counter()
    ref = dense_reference(apply_fn, params, x[: args.dense_samples])
    dense_s = time.perf_counter() - t0
    exact = rows["bigmem"]["out"]["values"]
    if torch_future is not None:
        rows["torch_per_output"] = dict(time=torch_result["time"],
                                        median=torch_result["median"], compile=None,
                                        mem={"peak": torch_result["rss_growth"]},
                                        out={"values": torch_result["values"]},
                                        cold=torch_result["cold"],
                                        repeats=torch_result["repeats"])

    print(f"\n== K = {k_out}: ResNet18K(k={args.k}), batch {args.batch_size} x 32 x 32 x 3 "
          f"(D = 3072), sigma_max of the K x D logit Jacobian; dense reference "
          f"{dense_s:.1f}s for {args.dense_samples} samples ==")
    print(f"{'method':<18}{'warm min':>10}{'median':>9}{'vs floor':>9}{'compile':>9}"
          f"{'temp':>12}{'peak':>12}{'err dense':>11}{'vs bigmem':>10}  notes")
    for name, row in rows.items():
        mem = row.get("mem") or {}
        compile_s = f"{row['compile']:8.1f}s" if row.get("compile") is not None else "       - "
        err_dense = err_exact = notes = ""
        if "out" in row:
            vals = np.asarray(row["out"]["values"])
            err_dense = f"{_rel(vals[: args.dense_samples], ref):.1e}"
            err_exact = f"{_rel(vals, exact):.1e}"
            if row["out"].get("iterations") is not None:
                it, conv = row["out"]["iterations"], row["out"]["converged"]
                notes = (f"iters mean {np.mean(it):.1f} max {np.max(it)}, "
                         f"converged {int(np.sum(conv))}/{conv.size}")
                if name == "matrix_free":  # Lanczos: a block of 2 vectors per iteration
                    notes += f" (2 jvp + vjp pairs per iteration, K = {k_out})"
        if name == "torch_per_output":
            notes = f"peak = RSS growth; cold {row['cold']:.2f}s; {row['repeats']} warm runs"
        print(f"{name:<18}{row['time']:>9.3f}s{row['median']:>8.3f}s"
              f"{row['time'] / rows['floor']['time']:>8.2f}x{compile_s:>9}"
              f"{_mib(mem.get('temp')):>12}{_mib(mem.get('peak')):>12}"
              f"{err_dense:>11}{err_exact:>10}  {notes}")
    return rows


def main(argv=None):
    start = time.perf_counter()
    args = parse_args(argv)
    ks = [int(v) for v in args.num_classes.split(",")]
    torch_pool = None
    if not args.no_torch:
        try:
            import torch  # noqa: F401
            torch_pool = mp.get_context("spawn").Pool(1)
        except ImportError:
            print("torch not installed: skipping the PyTorch baseline")
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPU cores, "
          f"python {platform.python_version()}; irmx defaults: tol "
          f"{measures.metrics.DEFAULT_TOL:g}, max_iters {measures.metrics.DEFAULT_MAX_ITERS}")
    print("learners_per_group=1 (one network: a learner axis of size 1, no groups; the vmapped "
          "axes here are the batch and, in bigmem and floor, the K cotangents)")
    results = {k: bench_one_k(args, k, torch_pool) for k in ks}
    if torch_pool is not None:
        torch_pool.close()
        torch_pool.join()

    k_small, k_big = min(ks), max(ks)
    small = results[k_small]
    best = min(("bigmem", "per_output"), key=lambda n: small[n]["time"])
    best_t = small[best]["time"]
    default = measures.default_mode(METRIC, k_small)
    print(f"\nbest exact irmx mode at K={k_small}: {best} ({best_t:.3f}s); "
          f"default mode ({default}) {small[default]['time']:.3f}s = "
          f"{small[default]['time'] / small['floor']['time']:.2f}x floor")
    vs_torch = (small["torch_per_output"]["time"] / best_t) if "torch_per_output" in small else 0
    floor_over_best = small["floor"]["time"] / best_t
    big = results[k_big]
    mf_vs_bigmem = big["bigmem"]["time"] / big["matrix_free"]["time"]
    print(f"benchmark wall time {time.perf_counter() - start:.0f}s")
    print(f"speedup best_vs_torch_per_output={vs_torch:.2f} floor_over_best={floor_over_best:.2f} "
          f"matrix_free_vs_bigmem_k100={mf_vs_bigmem:.2f}")


if __name__ == "__main__":
    main()
