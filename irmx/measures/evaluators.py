"""Built-in evaluator types of ``irmx.registry`` (configured as ``config.evals.<name>``).

``classification``: mean cross-entropy and top-1 accuracy of a classifier over a whole split,
in batches (``lax.map``; the last batch padded and its padding masked out, as
``irmx.classify.evaluate_split`` does)::

    config.evals.test = {"type": "classification", "split": "test", "every": 10}
    registry.make_evaluator("test", config.evals.test, apply_fn=eval_apply, batch_size=500,
                            splits={"test": lambda d: (d["test_images"], d["test_labels"])})
"""

from irmx import registry
from irmx.errors import ArgumentError


@registry.register_evaluator("classification", keys=("loss", "accuracy"),
                             options={"split": registry.REQUIRED, "batch_size": None})
def classification(spec, *, name, apply_fn, splits, batch_size=None, **unused):
    """``fn(variables, data) -> {loss, accuracy}`` over split ``spec["split"]``.

    apply_fn(variables, x_BxHxWxC) -> logits_BxK in inference mode; splits: split name ->
    ``fn(data) -> (images, integer labels)`` (the learner's data, e.g. its noisy training
    labels); batch size: ``spec["batch_size"]``, else the context's ``batch_size``."""
    del unused  # context meant for other evaluator types
    from irmx import classify as cls

    split = spec["split"]
    if split not in splits:
        raise registry.spec_error(name, "split", split, "one of " + ", ".join(splits))
    size = spec["batch_size"] if spec["batch_size"] is not None else batch_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        if spec["batch_size"] is None:  # the context's
            raise ArgumentError(f"evaluator {name!r}", "batch_size", size, "an integer >= 1")
        raise registry.spec_error(name, "batch_size", size, "an integer >= 1")
    get = splits[split]

    def fn(variables, data):
        x, y = get(data)
        return cls.evaluate_split(apply_fn, variables, x, y, size)

    return fn
