"""irmx: experiment families for the science of deep-learning training, as one vmapped program."""

__version__ = "0.1.0"
