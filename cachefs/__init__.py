"""CAI sidecar suite."""
