"""The hypergrad family: one-pass optimisation of weight-update hyperparameters (Clarke,
Oldewage & Hernandez-Lobato, ICLR 2022).

``rule``: the update rule d = g + wd w, b = mu b + d, w -= eta b on unconstrained scales;
``ift``: implicit-function-theorem hypergradients with the truncated Neumann series;
``algorithms``: one chunk (T network steps + one hyperparameter step) per algorithm.
Driver: ``irmx.experiments.hypergrad``.
"""
