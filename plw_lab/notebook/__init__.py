"""ipywidgets helpers for the teaching notebooks."""
