"""Sweeps: every combination of some training flags with several seeds, each an ordinary run.

    python -m jaxmnist.sweep --seeds 0 1 2 --grid lr=1e-3,3e-3 --grid dropout=0,0.3 -- --epochs 5

plan (the runs and whether each has finished), pool (running them here, several at once), slurm
(a job-array script instead), table (mean +- std per combination), command (the command line).
"""
