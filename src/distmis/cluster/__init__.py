"""Cluster support: SLURM resource arithmetic and a Ray cluster across a job's nodes."""
