"""The TensorGrid coordinator: api · scheduler · verifier · aggregator · storage."""
