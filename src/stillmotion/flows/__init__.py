"""Prefect flows: the batch flow over a manifest."""

from .batch import RunError, batch_flow

__all__ = ["RunError", "batch_flow"]
