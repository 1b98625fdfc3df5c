"""The release gate: disclosure control, differential privacy, auditing, pseudonymization."""
