"""TensorGrid: a decentralized GPU compute grid for PyTorch jobs."""
