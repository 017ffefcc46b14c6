"""Prefect flows: the batch flow over a manifest (imported on first use: Prefect takes seconds)."""

__all__ = ["RunError", "batch_flow"]


def __getattr__(name: str):
    if name == "batch_flow":
        from .batch import batch_flow

        return batch_flow
    if name == "RunError":
        from .tracking import RunError

        return RunError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
