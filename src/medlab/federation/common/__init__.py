"""What every party of the federation shares: messages, task states, request signatures."""
