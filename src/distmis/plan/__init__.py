"""Planning: predict a grid's makespan per parallelism mode and G from measured runs.

- :mod:`.runs`: read a finished training run's documented files;
- :mod:`.measure`: one run's measured parts, from its files;
- :mod:`.calibration`: the measured numbers (``calibration_<backend>.json``), merged from runs;
- :mod:`.allreduce`: the ring all-reduce formula and its fit to measured points;
- :mod:`.schedule`: Ray Tune's placement of trials on slots (list scheduling);
- :mod:`.model`: :func:`~.model.predict` and :func:`~.model.validate`.

No Ray, no framework: only the standard library.
"""
