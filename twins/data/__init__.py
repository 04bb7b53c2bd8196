"""Data: canonical schema, source configs, readers, ingest with quarantine, event access."""
