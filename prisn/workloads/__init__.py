"""Workload cores: pure functions and types (scheduler, model; runner and cron later)."""
