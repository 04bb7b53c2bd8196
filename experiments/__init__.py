"""Benchmarks behind BENCHMARKS.md: one command each, logging to MLflow and writing their table."""
