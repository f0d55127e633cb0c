"""Helpers for running stages on cluster nodes (node-local scratch staging)."""
