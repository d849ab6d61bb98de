"""Penn Treebank (Mikolov's ``simple-examples`` text) for the hypergrad family's language model.

Follows Clarke et al. (ICLR 2022), reference code rmclarke/OptimisingWeightUpdateHyperparameters
(``datasets.PennTreebank``, ``download_and_process_data.get_penntreebank``): tokens are
``line.split() + ['<eos>']`` per line; the stream is batchified time-major into ``(L, P)``
(``P`` parallel sequences) and cut into back-propagation-through-time batches of ``seq_len``
rows, targets being the inputs shifted one row. Loading is numpy on the host; ``bptt_batch`` is
jax.numpy so a traced batch index works under ``jax.jit``. irmx never downloads the files.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np

from irmx.data.images import DatasetNotFoundError

PTB_URL = "http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz"
PTB_FILES = {"train": "ptb.train.txt", "valid": "ptb.valid.txt", "test": "ptb.test.txt"}
# configs/penn_treebank.yaml: validation_proportion = 73760/1003349 (exactly ptb.valid.txt)
PTB_VAL_FRACTION = 0.07351380


def _ptb_dir(data_dir: str) -> str:
    """``data_dir`` itself or its ``simple-examples/data/`` (the archive's layout), whichever
    holds all three files; ``DatasetNotFoundError`` naming both otherwise."""
    root = os.path.expanduser(str(data_dir))
    candidates = [root, os.path.join(root, "simple-examples", "data")]
    for directory in candidates:
        if all(os.path.isfile(os.path.join(directory, f)) for f in PTB_FILES.values()):
            return directory
    expected = " or ".join(os.path.join(d, "ptb.{train,valid,test}.txt") for d in candidates)
    raise DatasetNotFoundError(
        f"Penn Treebank not found: expected {expected}; irmx never downloads it: fetch and "
        f"unpack {PTB_URL} (its simple-examples/data/ holds the files) into data_dir"
    )


def _read_tokens(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [word for line in f for word in line.split() + ["<eos>"]]


def load_ptb(data_dir: str) -> dict:
    """The three PTB files of ``data_dir`` as token ids.

    Returns ``dict(train, valid, test)`` int32 arrays, ``vocab`` (list, id -> word) and
    ``num_tokens``. Ids are the **sorted** words of all three files (deterministic); the
    reference numbers words by iterating a Python ``set`` and saves that mapping, so its exact
    ids cannot be reproduced (only the vocabulary, 10000 words, and the token streams can).
    """
    directory = _ptb_dir(data_dir)
    words = {split: _read_tokens(os.path.join(directory, f)) for split, f in PTB_FILES.items()}
    vocab = sorted(set().union(*words.values()))
    ids = {word: i for i, word in enumerate(vocab)}
    out = {split: np.asarray([ids[w] for w in ws], np.int32) for split, ws in words.items()}
    return dict(out, vocab=vocab, num_tokens=len(vocab))


def split_ptb(data: dict, val_fraction: float | None = None):
    """(train, val, test) token arrays.

    ``None``: the files' own split. Otherwise the reference's rule (``make_split_datasets``):
    the stream train+valid+test is cut into train_val = its first len(train)+len(valid) tokens
    and test = its last len(test); the first ``rint((1 - val_fraction) * len(train_val))``
    tokens of train_val train, the rest validate. ``PTB_VAL_FRACTION`` gives back exactly the
    files' split. (The reference splits batchified time rows; here tokens, before batchify.)
    """
    if val_fraction is None:
        return data["train"], data["valid"], data["test"]
    stream = np.concatenate([data["train"], data["valid"], data["test"]])
    train_val = stream[: len(data["train"]) + len(data["valid"])]
    test = stream[len(stream) - len(data["test"]):]
    num_train = int(np.rint(len(train_val) * (1.0 - val_fraction)))
    return train_val[:num_train], train_val[num_train:], test


def batchify(tokens, parallel_sequences: int) -> np.ndarray:
    """The reference's ``PennTreebank.batchify``: drop ``len % P`` trailing tokens, view as
    ``(P, -1)`` and transpose: shape ``(L, P)``, column ``p`` a contiguous piece of the stream."""
    tokens = np.asarray(tokens)
    length = len(tokens) // parallel_sequences
    return np.ascontiguousarray(tokens[: length * parallel_sequences].reshape(parallel_sequences,
                                                                               length).T)


def num_bptt_batches(length: int, seq_len: int) -> int:
    """Number of full batches of ``seq_len`` rows in a batchified ``(length, P)`` array.

    Inputs are rows ``0..L-2`` and targets rows ``1..L-1`` (the reference's ``data[:-1]`` and
    ``data[1:]``); the reference's DataLoader (batch_size=70, shuffle=False, drop_last=False)
    also yields a last, shorter batch: it is **dropped** here so every batch has a static shape
    under jit (at most ``seq_len - 1`` time rows per epoch lost).
    """
    return (int(length) - 1) // int(seq_len)


def bptt_batch(batched, index, seq_len: int):
    """(inputs ``(seq_len, P)``, targets ``(seq_len, P)``) of batch ``index`` (may be traced):
    rows ``index*seq_len ...`` of the batchified array and the same rows shifted by one."""
    batched = jnp.asarray(batched)
    start = jnp.asarray(index, jnp.int32) * seq_len
    width = batched.shape[1]
    inputs = jax.lax.dynamic_slice(batched, (start, 0), (seq_len, width))
    targets = jax.lax.dynamic_slice(batched, (start + 1, 0), (seq_len, width))
    return inputs, targets
