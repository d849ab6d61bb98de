"""Penn Treebank loading, batching and the LSTM language model (irmx.data.ptb, irmx.nets.lstm)
against numpy references of the reference code's rules and torch.nn.LSTM's equations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from irmx.data import ptb
from irmx.errors import UserError
from irmx.nets import lstm

LINES = {
    "train": ["the cat sat on the mat", "a dog ran", "the dog sat", "cat on a mat"],
    "valid": ["a cat ran", "the mat"],
    "test": ["dog on the cat", "a mat sat"],
}


def write_ptb(directory):
    directory.mkdir(parents=True, exist_ok=True)
    for split, lines in LINES.items():
        (directory / f"ptb.{split}.txt").write_text("".join(f" {line} \n" for line in lines))


def test_load_both_layouts_and_ids(tmp_path):
    write_ptb(tmp_path / "flat")
    write_ptb(tmp_path / "arch" / "simple-examples" / "data")
    a, b = ptb.load_ptb(tmp_path / "flat"), ptb.load_ptb(tmp_path / "arch")
    for split in ("train", "valid", "test"):
        np.testing.assert_array_equal(a[split], b[split])
        assert a[split].dtype == np.int32
        words = [w for line in LINES[split] for w in line.split() + ["<eos>"]]
        assert [a["vocab"][i] for i in a[split]] == words
    assert a["vocab"] == sorted(a["vocab"]) and a["num_tokens"] == len(a["vocab"]) == 9


def test_missing_file_one_error(tmp_path):
    write_ptb(tmp_path)
    (tmp_path / "ptb.valid.txt").unlink()
    with pytest.raises(UserError) as info:
        ptb.load_ptb(tmp_path)
    message = str(info.value)
    assert "\n" not in message and str(tmp_path) in message and ptb.PTB_URL in message
    assert isinstance(info.value, FileNotFoundError)


def test_split_rule(tmp_path):
    write_ptb(tmp_path)
    data = ptb.load_ptb(tmp_path)
    own = ptb.split_ptb(data)
    assert [len(x) for x in own] == [len(data[s]) for s in ("train", "valid", "test")]
    n_tr, n_va = len(data["train"]), len(data["valid"])
    train, val, test = ptb.split_ptb(data, n_va / (n_tr + n_va))
    np.testing.assert_array_equal(train, data["train"])
    np.testing.assert_array_equal(val, data["valid"])
    np.testing.assert_array_equal(test, data["test"])
    # the real set's sizes: 929589 + 73760 train_val tokens, fraction 0.0735138
    assert int(np.rint(1003349 * (1 - ptb.PTB_VAL_FRACTION))) == 929589
    train, val, _ = ptb.split_ptb(data, 0.5)
    assert len(train) == int(np.rint((n_tr + n_va) * 0.5)) and len(train) + len(val) == n_tr + n_va


def test_batchify_and_bptt_cover_stream():
    tokens = np.arange(103, dtype=np.int32)
    batched = ptb.batchify(tokens, 4)
    expected = np.stack([tokens[p * 25:(p + 1) * 25] for p in range(4)], axis=1)
    np.testing.assert_array_equal(batched, expected)
    assert batched.shape == (25, 4)
    seq_len = 5
    n = ptb.num_bptt_batches(25, seq_len)
    assert n == 4  # rows 0..23 are inputs; the short last batch (row 20..23) is dropped
    batch = jax.jit(ptb.bptt_batch, static_argnums=2)
    pieces = [batch(batched, i, seq_len) for i in range(n)]
    np.testing.assert_array_equal(np.concatenate([x for x, _ in pieces]), batched[:20])
    np.testing.assert_array_equal(np.concatenate([y for _, y in pieces]), batched[1:21])


def numpy_lstm_lm(params, tokens, carry):
    """torch.nn.LSTM's equations in float64 numpy with the same weights."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    x = p["encoder"]["embedding"][tokens]
    sig = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
    out_carry = []
    for k, (h, c) in enumerate(carry):
        h, c = np.asarray(h, np.float64), np.asarray(c, np.float64)
        hs = []
        for t in range(x.shape[0]):
            gates = (x[t] @ p[f"weight_ih_l{k}"].T + p[f"bias_ih_l{k}"]
                     + h @ p[f"weight_hh_l{k}"].T + p[f"bias_hh_l{k}"])
            i, f, g, o = np.split(gates, 4, axis=-1)
            c = sig(f) * c + sig(i) * np.tanh(g)
            h = sig(o) * np.tanh(c)
            hs.append(h)
        x = np.stack(hs)
        out_carry.append((h, c))
    logits = x @ p["decoder"]["kernel"] + p["decoder"]["bias"]
    return logits, out_carry


MODEL = lstm.LSTMLanguageModel(num_tokens=30, embed_size=6, hidden_size=8, num_layers=2)


def init_params(P=3, T=7):
    tokens = jax.random.randint(jax.random.key(1), (T, P), 0, 30)
    params = MODEL.init(jax.random.key(0), tokens, MODEL.initial_carry(P))["params"]
    return params, tokens


def test_init_and_forward_match_torch_equations():
    params, tokens = init_params()
    bound = 1 / np.sqrt(8)
    for name in ("weight_ih_l0", "weight_hh_l1", "bias_ih_l0", "bias_hh_l1"):
        assert np.abs(params[name]).max() <= bound
    assert params["weight_ih_l0"].shape == (32, 6) and params["weight_ih_l1"].shape == (32, 8)
    assert np.abs(params["decoder"]["kernel"]).max() <= bound
    assert np.abs(params["encoder"]["embedding"]).max() > bound  # N(0, 1), not uniform
    carry = jax.tree.map(lambda z: jax.random.normal(jax.random.key(2), z.shape),
                         MODEL.initial_carry(3))
    logits, new_carry = jax.jit(MODEL.apply)({"params": params}, tokens, carry)
    ref_logits, ref_carry = numpy_lstm_lm(params, np.asarray(tokens), carry)
    assert logits.shape == (7, 3, 30)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-5)
    for (h, c), (rh, rc) in zip(new_carry, ref_carry):
        np.testing.assert_allclose(h, rh, atol=1e-5)
        np.testing.assert_allclose(c, rc, atol=1e-5)


def test_loss_carry_reset_grad_and_jit():
    params, _ = init_params()
    batched = ptb.batchify(np.random.default_rng(0).integers(0, 30, 3 * 25), 3)
    seq_len = 4
    batch_fn = jax.jit(ptb_batch_fn := lstm.make_lm_batch_fn(batched, seq_len), static_argnums=0)
    loss = lstm.make_lm_loss(MODEL)
    state = {"carry": MODEL.initial_carry(3)}
    n = ptb.num_bptt_batches(25, seq_len)
    assert n == 6
    # the carry passed from batch to batch equals one forward pass over the whole stream
    losses = []
    for step in range(n):
        inputs, targets, reset = batch_fn(None, jnp.asarray(step), None)
        assert bool(reset) == (step == 0)
        value, aux = jax.jit(loss)(params, state, (inputs, targets, reset), None, None)
        np.testing.assert_allclose(aux["perplexity"], np.exp(value), rtol=1e-6)
        state = aux["model_state"]
        losses.append(value)
    logits, carry = MODEL.apply({"params": params}, jnp.asarray(batched[:24]),
                                MODEL.initial_carry(3))
    np.testing.assert_allclose(state["carry"][1][0], carry[1][0], atol=1e-5)
    logp = jax.nn.log_softmax(logits)
    whole = -np.mean(np.take_along_axis(np.asarray(logp), batched[1:25, :, None], axis=-1))
    np.testing.assert_allclose(np.mean(losses), whole, rtol=1e-5)
    value, ppl = jax.jit(lstm.evaluate_lm, static_argnums=(0, 3))(MODEL, params, batched, seq_len)
    np.testing.assert_allclose(value, whole, rtol=1e-5)
    np.testing.assert_allclose(ppl, np.exp(whole), rtol=1e-5)
    # step n wraps to batch 0 and resets: same loss as the first step from a stale carry
    inputs, targets, reset = ptb_batch_fn(None, jnp.asarray(n), None)
    assert bool(reset)
    value, _ = loss(params, state, (inputs, targets, reset), None, None)
    np.testing.assert_allclose(value, losses[0], rtol=1e-6)
    value_no_reset, _ = loss(params, state, (inputs, targets, jnp.asarray(False)), None, None)
    assert abs(float(value_no_reset) - float(losses[0])) > 1e-6
    # gradient finite and independent of the carry (stop_gradient)
    grads = jax.jit(jax.grad(lambda p, s: loss(p, s, (inputs, targets, False), None, None)[0]))
    g = grads(params, state)
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(g))
    g_state = jax.grad(lambda s: loss(params, s, (inputs, targets, False), None, None)[0])(state)
    assert all(np.all(leaf == 0) for leaf in jax.tree.leaves(g_state))


def test_trains_in_irmx_chunk_with_clipping():
    import optax

    from irmx import train

    params, _ = init_params()
    batched = jnp.asarray(ptb.batchify(np.random.default_rng(0).integers(0, 30, 3 * 25), 3))
    optimizer = optax.chain(optax.clip_by_global_norm(0.25), optax.sgd(1.0))
    update = train.make_update(lstm.make_lm_loss(MODEL), optimizer)
    step = train.make_step(update, lstm.make_lm_batch_fn(batched, 4))
    raw_chunk = train.make_chunk(step, 13)  # 6 batches per epoch: wraps and resets, twice
    chunk = jax.jit(raw_chunk)
    state = train.init_state(params, optimizer, jax.random.key(3),
                             model_state={"carry": MODEL.initial_carry(3)})
    before = float(lstm.evaluate_lm(MODEL, params, batched, 4)[0])
    state, _ = chunk(state, batched)
    state, _ = chunk(state, batched)
    assert int(state.step) == 26 and not bool(state.diverged) and raw_chunk.num_traces == 1
    assert float(lstm.evaluate_lm(MODEL, state.params, batched, 4)[0]) < before
