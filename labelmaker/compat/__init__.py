"""Workarounds for third-party packages, each behind an explicit opt-in."""
