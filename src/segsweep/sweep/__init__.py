"""Optuna studies over segsweep runs: the sweeper (submitting side), the trial link (job side), the summary."""
