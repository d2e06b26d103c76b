"""The plan: what a method decided (schema, builder, validator), and the only code that applies it
to a model (``apply_plan``), saves a pruned model and reloads it."""
