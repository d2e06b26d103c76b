"""Pruning methods: each scores a model on calibration windows and returns what to remove.

``depth/``: block and layer methods on the engine (BlockPruner and its baselines); ``width/``:
LLM-Pruner; ``registry.py``: the one table of methods and their capabilities; ``options.py``:
the depth options.
"""
