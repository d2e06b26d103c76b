"""The block-stepping engine, its state store and work counter, and the chunked criteria."""

from prunekit.engine.loss import counted_targets, reference_nll, window_kl, window_nll
from prunekit.engine.runner import Engine, StateStore, WorkCounter, block_macs_per_token

__all__ = ["Engine", "StateStore", "WorkCounter", "block_macs_per_token", "counted_targets", "reference_nll", "window_kl", "window_nll"]
