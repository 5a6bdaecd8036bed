"""Seeing the mesh: Prometheus for a local cluster (its scrape targets, its configuration and recording
rules), and what the dashboards and the service graph read from it."""
