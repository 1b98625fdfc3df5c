"""Cohorts: one definition language, ATLAS/Circe import, a SQL compiler, generation."""
