"""The observability pack: alert rules (and, next, the dashboard and Grafana export)."""
