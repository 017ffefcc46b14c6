"""stillmotion: training-free video generation from a single image with Stable Diffusion, at scale."""

__version__ = "0.1.0"

# Bump when the numbers an algorithm produces change: it is part of every artifact's cache key.
ALGORITHM_VERSION = "sm-2"
