"""Authorized operation on the hub: organisations, users with roles and scoped tokens,
projects and their members, data-use agreements per project and node, two-person approvals,
budget holds and metered usage (see the README's "Authorized operation")."""
