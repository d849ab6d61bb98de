"""Drivers: one per family, ``run(config, workdir) -> summary``. Only drivers and ``irmx.io``
touch the filesystem."""
