"""Twins: point-in-time state per customer (and, later, per machine) and the versioned store they live in."""
