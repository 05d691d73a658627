"""Cluster client (issue 3)."""
