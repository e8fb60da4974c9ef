"""The replicated state machine: deployments keyed by namespace/name (pure, deterministic)."""
