"""A toy world with ground truth, a model trained on it, and quality metrics for the method."""
