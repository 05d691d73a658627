"""Cluster tooling (issue 4)."""
