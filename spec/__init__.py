"""The run spec at the bottom of the dependency graph: imports nothing of ours."""
