"""Scaling analysis: training timings → speedup table, figures and the Snakemake report.

Reads only the training contract
(``results/train/{backend}/{mode}/{G}gpu/{trials.csv,summary.json}``) and never imports the
training stage, so it runs in the light plotting environment.
"""
