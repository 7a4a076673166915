"""What a person watching sees: `progress` (live progress, ETA) and `metrics` (Ray/Prometheus metrics, stage timings)."""
