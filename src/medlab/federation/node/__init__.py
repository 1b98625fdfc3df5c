"""The node agent: dials out to the hub, checks its own policy, runs and uploads releases."""
