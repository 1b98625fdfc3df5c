"""Realistic synthetic hospitals with planted, documented effects."""
