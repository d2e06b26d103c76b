"""Width pruning (LLM-Pruner): importance of the coupled groups, the choice under a parameter
budget, and the plan (:func:`~prunekit.methods.width.llm_pruner.plan_width`). The groups are the
model's (:mod:`prunekit.models.groups`); slicing is the plan's (:mod:`prunekit.plan.slicing`)."""
