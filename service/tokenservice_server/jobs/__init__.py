"""One-shot operational commands (Kubernetes Jobs and CronJobs)."""
