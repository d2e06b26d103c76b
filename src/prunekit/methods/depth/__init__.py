"""Depth methods: attention blocks, MLP blocks or whole layers removed, chosen on the engine."""
