"""Measuring models: perplexity, zero-shot accuracy (lm-eval), speed, and the run reports."""
