"""Training stage, backend-neutral: the grid, settings, the per-trial skeleton, both parallelism
modes and the results contract. The frameworks live in :mod:`distmis.backends`."""
