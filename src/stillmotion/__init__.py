"""stillmotion: training-free video generation from a single image with Stable Diffusion, at scale."""

__version__ = "0.1.0"

# Bump when the numbers an algorithm produces (or the artifacts' format) change: it is part of every
# artifact's cache key and of every row fingerprint. sm-3: sidecars hold the sha256 of their data, checked
# on read; sm-4: stage keys hash exactly the resolved fields each stage reads, and the image fit crops
# before it resizes (the first run after upgrading remakes every row); sm-5: a real-mode video starts on
# the fitted input itself, not on the reference pass's reconstruction of it
ALGORITHM_VERSION = "sm-5"
