"""Exact federated estimators: each site computes sums (scores, information matrices,
deviances) over its own rows; only their total, securely aggregated, reaches the hub; the
fit equals the pooled fit on the union of the sites' rows."""
