"""The training worker: one experiment directory in, a trained adapter and its record out.

Run by the scheduler as ``python -m perl_cli.train <experiment-dir>``; tests call
`run_experiment` in-process.
"""

from perl_cli.train.worker import run_experiment

__all__ = ["run_experiment"]
