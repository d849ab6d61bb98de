"""Filesystem side of irmx: the workdir contract, metrics writers, checkpoints, plots."""
