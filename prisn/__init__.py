"""prisn: a Raft-replicated control plane for deployments of scripts and services."""

__version__ = "0.1.0"
