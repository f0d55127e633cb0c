"""Stages, their records and (later) the executors that run them."""
