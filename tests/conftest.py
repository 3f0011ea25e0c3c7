"""Shared test setup: pin threads (docs/stack.md: stalls with 2 threads), keep caches in tmp."""

from __future__ import annotations

import os

# Set before torch is imported anywhere in the test process.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
