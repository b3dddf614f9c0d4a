"""Scaling stage: training timings → speedup table, figures and the Snakemake report.

- :mod:`~distmis.scaling.timings`: typed, validated ``trials.csv`` + ``summary.json`` of a run;
- :mod:`~distmis.scaling.table`: the scaling table (``scaling.csv``) and its test Dice column;
- :mod:`~distmis.scaling.quality`: each run's best validation Dice so far over time, its
  time to best and its time to the study's common quality target (from the trials'
  ``epochs.jsonl``);
- :mod:`~distmis.scaling.timeline`: which lane (GPU or worker) each trial held, and when;
- :mod:`~distmis.scaling.plot`: the speedup, efficiency, makespan, time-to-target and
  timeline figures, and all figures in one call; :mod:`~distmis.scaling.quality_plot` the
  time-to-quality figure;
  :mod:`~distmis.scaling.style` the colours, line styles and saving they share;
- :mod:`~distmis.scaling.run`: all of it in one call (``distmis scaling``).

Reads only the training contract
(``results/train/{backend}/{mode}/{G}gpu/{trials.csv,summary.json,trials/*/epochs.jsonl}``,
the mode folder being ``data``, ``experiment`` or ``hybrid{k}``) and rule evaluate's
``results/evaluate/{backend}/{mode}/summary.json``, and never imports the training stage or a
framework, so it runs in the light plotting environment.
"""
