"""Analyses, each a local step (inside a node, aggregates out) and a combine step."""
