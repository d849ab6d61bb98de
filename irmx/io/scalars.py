"""Every logged scalar of a workdir as numpy arrays (the reference's ``util.get_tags``, read from
``metrics.jsonl`` rather than TensorBoard event files)::

    s = read_scalars("runs/hg")
    s["step"]            # (S,) int64: the sorted distinct logged steps
    s["learner"]         # (N,) int64: learner indices (axis order)
    s["learner_id"]      # (N,) str
    s["val_loss"]        # (N, S) float64, NaN where a learner has no value at a step
    s["lr_quantiles"]    # (N, S, K) float64 for a vector metric (K = 11 deciles)
    s["coords"]          # {name: (N,)}: every coordinate of the learner axis, as initialised
    s["seed"]            # (N,): a coordinate is also at the top level unless a metric has its
                         # name (hypergrad's lr/weight_decay/momentum are logged metrics: their
                         # initial values are s["coords"]["lr"] ...)

metrics.jsonl rows hold the axis coordinates next to the metrics, and a metric of the same name
overwrites the coordinate in the row, so the initial coordinates are taken from the results
store (``learners/<learner_id>.json``) or, for learners without a stored result (a run still
going), from the learner axis of ``config.json``; a row's own values only where neither knows
the learner. Learners are told apart by ``learner_id`` (their ``learner`` index when rows have
no id); a resumed run that wrote a (learner, step) twice keeps the last row. Booleans
(``diverged``, ``hyper_skipped``) are 0.0 / 1.0; null (non-finite) values are NaN. A torn last
line of a killed run is skipped.

The file is parsed by pyarrow's JSON reader (a multi-threaded C++ parser; the json module row by
row where pyarrow cannot read a file, or with ``use_arrow=False``; both give the same arrays).
``benchmarks/read_scalars.py``: 200 learners x 400 logged steps (80,000 rows, 63 MB) in 0.36 s
with pyarrow, 1.9 s with json, on 2 CPU cores.
"""

import gc
import json
import os
from itertools import repeat

import numpy as np

from irmx.io import workdir as wd

ROW_KEYS = ("step", "learner", "learner_id", "cohort")  # a row's identity, not a metric


def _parse(path: str) -> list[dict]:
    """The rows of a metrics.jsonl, each line decoded once (``json``'s C scanner, without
    ``json.loads``' per-call overhead); lines that do not decode (a torn last line) skipped."""
    rows = []
    if not os.path.exists(path):
        return rows
    scan = json.JSONDecoder().scan_once
    append = rows.append
    with open(path) as f:
        for line in f:
            try:
                append(scan(line, 0)[0])
            except (StopIteration, json.JSONDecodeError):
                continue
    return [r for r in rows if isinstance(r, dict)] if rows and not all(
        isinstance(r, dict) for r in rows) else rows


def _columns_from_rows(rows: list[dict]) -> tuple[int, dict]:
    """(number of rows, {name: list of values, None where a row lacks it}), names in the order
    they first appear."""
    names = dict.fromkeys(k for schema in dict.fromkeys(map(tuple, rows)) for k in schema)
    return len(rows), {n: list(map(dict.get, rows, repeat(n))) for n in names}


def _arrow_column(col):
    """One pyarrow column -> a list (the row keys, strings, odd types) or a float64 / bool
    numpy array (NaN for null) or an (n, K) float64 array for equal-length number lists."""
    import pyarrow as pa
    import pyarrow.compute as pc

    t = col.type
    number = lambda u: pa.types.is_integer(u) or pa.types.is_floating(u)
    if col.null_count == 0 and (pa.types.is_boolean(t) or pa.types.is_integer(t)):
        return col.to_numpy()
    if number(t) or pa.types.is_boolean(t):
        return pc.cast(col, pa.float64()).to_numpy()  # nulls become NaN
    if pa.types.is_list(t) and number(t.value_type) and col.null_count == 0:
        lengths = pc.list_value_length(col).to_numpy()
        if len(lengths) and np.all(lengths == lengths[0]):
            flat = pc.cast(pc.list_flatten(col), pa.float64()).to_numpy()
            return flat.reshape(len(col), int(lengths[0]))
    return col.to_pylist()


def _columns_from_arrow(path: str):
    """(number of rows, columns) through pyarrow's JSON reader (a multi-threaded C++ parser, about
    5x ``json`` here), the text up to the last newline (a torn last line is left out). None when
    pyarrow is missing or cannot read the file."""
    try:
        import pyarrow as pa
        import pyarrow.json as pa_json
    except ImportError:
        return None
    with open(path, "rb") as f:
        text = f.read()
    text = text[:text.rfind(b"\n") + 1]
    if not text.strip():
        return 0, {}
    try:
        table = pa_json.read_json(pa.BufferReader(text))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None  # a line that is not an object, mixed types: the json reader decides
    columns = {}
    for name in table.column_names:
        col = table.column(name)
        columns[name] = col.to_pylist() if name in ROW_KEYS else _arrow_column(col)
    return table.num_rows, columns


def _read_columns(path: str, use_arrow: bool | None = None) -> tuple[int, dict]:
    """metrics.jsonl as columns: pyarrow when it is installed (``use_arrow`` None) and reads the
    file, else ``json`` row by row."""
    if not os.path.exists(path):
        return 0, {}
    if use_arrow is not False:
        out = _columns_from_arrow(path)
        if out is not None:
            return out
        if use_arrow:
            raise ImportError("pyarrow could not read " + path)
    return _columns_from_rows(_parse(path))


def _take(col, idx: np.ndarray):
    return col[idx] if isinstance(col, np.ndarray) else [col[j] for j in idx]


def _keep_last(learner_idx: np.ndarray, step_idx: np.ndarray, num_steps: int) -> np.ndarray:
    """Indices of the rows that are the last write of their (learner, step), in file order."""
    flat = learner_idx * num_steps + step_idx
    _, first_from_end = np.unique(flat[::-1], return_index=True)
    return np.sort(len(flat) - 1 - first_from_end)


def _float_column(values: list) -> np.ndarray:
    """Scalars (numbers, bools, None) -> float64, None as NaN."""
    try:
        return np.array(values, dtype=np.float64)
    except (TypeError, ValueError):  # a string or an odd value among them: NaN for those
        out = np.full(len(values), np.nan)
        for i, v in enumerate(values):
            if isinstance(v, (int, float)):
                out[i] = v
        return out


def _vector_column(values: list, n_rows: int) -> np.ndarray:
    """Lists of numbers (None rows and elements as NaN) -> (n_rows, K) float64."""
    k = max(len(v) for v in values if isinstance(v, list))
    out = np.full((n_rows, k), np.nan)
    for i, v in enumerate(values):
        if isinstance(v, list) and v:
            out[i, :len(v)] = np.array(v, dtype=np.float64)  # None elements become NaN
    return out


def _axis_coords(workdir: str) -> dict:
    """learner_id -> coords of the learner axis of ``workdir/config.json`` ({} when there is
    none or it describes no axis)."""
    try:
        config = wd.read_json(os.path.join(workdir, "config.json"))["config"]
    except (OSError, KeyError, ValueError):
        return {}
    try:
        import ml_collections

        from irmx.learners import axis_from_config

        axis = axis_from_config(ml_collections.ConfigDict(config))
        return dict(zip(axis.learner_ids(config), axis.rows))
    except Exception:  # noqa: BLE001 - an older or foreign config: fall back to the rows
        return {}


def _coords(workdir: str, ids: list, first_rows: list) -> tuple[dict, set]:
    """({name: (N,) array} of the learners' initial coordinates, the names of the metrics of
    their stored results)."""
    per_learner: list[dict | None] = []
    stored_metrics: set = set()
    for lid in ids:
        path = os.path.join(workdir, "learners", f"{lid}.json")
        try:
            record = wd.read_json(path)
            per_learner.append(dict(record["coords"]))
            stored_metrics.update(record.get("metrics", {}))
        except (OSError, KeyError, ValueError, TypeError):
            per_learner.append(None)
    if any(c is None for c in per_learner):
        from_axis = _axis_coords(workdir)
        per_learner = [c if c is not None else from_axis.get(lid) for c, lid in
                       zip(per_learner, ids)]
    names = list(dict.fromkeys(n for c in per_learner if c for n in c))
    out = {}
    for n in names:
        vals = [(c.get(n) if c is not None else row.get(n)) for c, row in
                zip(per_learner, first_rows)]
        arr = np.array(vals)
        out[n] = _float_column(vals) if arr.dtype == object else arr
    return out, stored_metrics


def read_scalars(workdir: str, use_arrow: bool | None = None) -> dict:
    """Every logged scalar of ``workdir`` (module docstring): ``step`` (S,), ``learner`` (N,),
    ``learner_id`` (N,), each metric (N, S) or (N, S, K), ``coords`` and the coordinates.
    ``use_arrow``: None = pyarrow's parser when installed, True = require it, False = ``json``
    (both give the same arrays)."""
    enabled = gc.isenabled()
    gc.disable()  # the rows are acyclic: collections while they are built only cost time
    try:
        return _read_scalars(workdir, use_arrow)
    finally:
        if enabled:
            gc.enable()


def _read_scalars(workdir: str, use_arrow: bool | None) -> dict:
    n_rows, cols = _read_columns(os.path.join(workdir, "metrics.jsonl"), use_arrow)
    if not n_rows:
        return {"step": np.zeros(0, np.int64), "learner": np.zeros(0, np.int64),
                "learner_id": np.zeros(0, str), "coords": {}}
    none = [None] * n_rows
    index_col = cols.get("learner", none)
    keys = cols["learner_id"] if cols.get("learner_id", none)[0] is not None else index_col
    if None in keys:  # rows without an id: told apart by their index
        keys = [k if k is not None else i for k, i in zip(keys, index_col)]
    latest_index = dict(zip(keys, index_col))  # the last row's learner index wins
    first_row = dict(zip(reversed(keys), range(len(keys) - 1, -1, -1)))  # the first wins
    ids = sorted(latest_index, key=lambda k: (_int(latest_index[k]), first_row[k]))
    position = {k: i for i, k in enumerate(ids)}
    learner_idx = np.fromiter(map(position.__getitem__, keys), np.int64, len(keys))
    steps, step_idx = np.unique(np.array(cols["step"], np.int64), return_inverse=True)
    first_rows = [{n: c[first_row[k]] for n, c in cols.items()} for k in ids]
    keep = _keep_last(learner_idx, step_idx, len(steps))
    if len(keep) < n_rows:
        cols = {n: _take(c, keep) for n, c in cols.items()}
        learner_idx, step_idx = learner_idx[keep], step_idx[keep]
        n_rows = len(keep)
    n, s = len(ids), len(steps)
    has_id = all(isinstance(k, str) for k in ids)
    coords, stored_metrics = _coords(workdir, ids, first_rows) if has_id else ({}, set())

    out = {"step": steps, "learner": np.array([_int(latest_index[k]) for k in ids], np.int64),
           "learner_id": np.array([str(k) for k in ids])}
    if cols.get("cohort", none)[0] is not None:  # a learner's cohort: the one of its last row
        cohort = dict(zip(map(ids.__getitem__, learner_idx), cols["cohort"]))
        out["cohort"] = np.array([str(cohort.get(k)) for k in ids])
    for name, col in cols.items():
        if name in ROW_KEYS:
            continue
        if isinstance(col, np.ndarray):
            values = col.astype(np.float64)
        else:
            try:
                values = np.array(col, dtype=np.float64)
            except (TypeError, ValueError):  # lists with a None among them, ragged, strings
                vec = _vector_column(col, len(col)) if any(isinstance(v, list) for v in col) \
                    else None
                values = vec if vec is not None else _float_column(col)
        arr = np.full((n, s) + values.shape[1:], np.nan)
        arr[learner_idx, step_idx] = values
        if name in coords and not _is_metric(name, arr, coords[name], stored_metrics):
            continue
        out[name] = arr
    out["coords"] = coords
    for name, values in coords.items():
        out.setdefault(name, values)
    return out


def _int(v) -> int:
    return int(v) if isinstance(v, (int, float)) else -1


def _is_metric(name: str, logged: np.ndarray, coord: np.ndarray, stored_metrics: set) -> bool:
    """A row's value under a coordinate's name is a metric (it overwrote the coordinate) when
    the learners' stored results have a metric of that name; without stored results, when some
    logged value differs from the coordinate (a logged float32 hyperparameter does)."""
    if stored_metrics:
        return name in stored_metrics
    if logged.ndim != 2 or coord.dtype.kind not in "biuf":
        return True
    seen = np.isfinite(logged)
    c = np.broadcast_to(np.asarray(coord, np.float64)[:, None], logged.shape)
    return bool(np.any(logged[seen] != c[seen]))
