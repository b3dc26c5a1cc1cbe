"""Targets: where flows deliver."""
