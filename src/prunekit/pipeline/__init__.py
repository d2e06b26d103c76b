"""The stages wired together: load a spec, prune (plan, apply, save), evaluate, compare, recover, export."""
