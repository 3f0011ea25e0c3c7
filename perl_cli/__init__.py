"""PeRL: run, watch, diagnose and compare matrices of parameter-efficient RL experiments."""

__version__ = "0.1.0"
