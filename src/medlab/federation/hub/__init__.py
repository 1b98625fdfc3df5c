"""The hub: onboarding, studies, tasks and combined results behind an HTTP API."""
