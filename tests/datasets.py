"""Datasets the tests build from what ships inside packages (no downloads)."""

from __future__ import annotations

from pathlib import Path

import torch

from tensorgrid.workloads.tensorfile import save_tensors


def save_digits(path: Path) -> int:
    """scikit-learn's 1,797 8×8 digits as a training set (features in [0, 1], int64 labels) at
    `path`; returns the row count."""
    from sklearn.datasets import load_digits  # scikit-learn takes a while to import

    x, y = load_digits(return_X_y=True)
    features = torch.tensor(x / 16.0, dtype=torch.float32)
    save_tensors({"features": features, "labels": torch.tensor(y, dtype=torch.int64)}, path)
    return len(y)
