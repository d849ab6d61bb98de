"""The IRM reference's published synthetic results, to print beside irmx's.

facebookresearch/InvariantRiskMinimization, ``code/experiment_synthetic/synthetic_results.txt``
(commit fc185d0f828a98f57030ba3647efc7394d1be95a): 200 repetitions per setting of ERM, ICP and
IRM on the chain SEM (dim 10, 1000 samples per environment, environments sigma = 0.2, 2, 5),
each line a method's causal and non-causal squared error. ``RESULTS[setting][method]`` is
(causal mean, causal std, non-causal mean, non-causal std) over those 200 lines (numpy mean and
population std), setting names as in the paper (F/P fully/partially observed, O/E
homo/heteroskedastic, U/S unscrambled/scrambled).
"""

SOURCE = ("facebookresearch/InvariantRiskMinimization code/experiment_synthetic/"
          "synthetic_results.txt")
NUM_REPETITIONS = 200
METHODS = ("ERM", "ICP", "IRM")

RESULTS = {
    "FOU": {
        "ERM": (0.00909, 0.00139, 0.00898, 0.00102),
        "ICP": (0.02010, 0.13999, 0.00001, 0.00020),
        "IRM": (0.00287, 0.00256, 0.00241, 0.00251),
    },
    "FOS": {
        "ERM": (0.00916, 0.00137, 0.00900, 0.00111),
        "ICP": (0.84627, 0.35895, 0.00112, 0.00276),
        "IRM": (0.00415, 0.00384, 0.00350, 0.00344),
    },
    "FEU": {
        "ERM": (0.82076, 0.01378, 0.82071, 0.01109),
        "ICP": (1.00000, 0.00000, 0.80350, 0.32425),
        "IRM": (0.25646, 0.01769, 0.33333, 0.01568),
    },
    "FES": {
        "ERM": (0.82283, 0.01326, 0.82215, 0.01057),
        "ICP": (0.98583, 0.04331, 0.10311, 0.27952),
        "IRM": (0.25724, 0.01646, 0.33276, 0.01527),
    },
    "POU": {
        "ERM": (0.01895, 0.00874, 0.01790, 0.00699),
        "ICP": (0.97001, 0.17051, 0.00000, 0.00000),
        "IRM": (0.01517, 0.01190, 0.01417, 0.01053),
    },
    "POS": {
        "ERM": (0.02034, 0.01054, 0.01815, 0.00872),
        "ICP": (1.00000, 0.00000, 0.00000, 0.00000),
        "IRM": (0.01897, 0.02002, 0.01592, 0.01670),
    },
    "PEU": {
        "ERM": (0.77380, 0.04750, 0.77416, 0.03808),
        "ICP": (1.00000, 0.00000, 0.00000, 0.00000),
        "IRM": (0.21491, 0.02415, 0.33992, 0.01946),
    },
    "PES": {
        "ERM": (0.77943, 0.05750, 0.77350, 0.04473),
        "ICP": (1.00000, 0.00000, 0.00000, 0.00000),
        "IRM": (0.22028, 0.02541, 0.34007, 0.01951),
    },
}


def reference_row(setting: str, method: str) -> dict:
    """{causal_error, noncausal_error}: (mean, std) of the reference's 200 repetitions."""
    c_mean, c_std, n_mean, n_std = RESULTS[setting][method]
    return {"causal_error": (c_mean, c_std), "noncausal_error": (n_mean, n_std)}
