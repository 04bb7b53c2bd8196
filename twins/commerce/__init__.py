"""Selling to machine customers: protocol shapes, seller policies and the agent-facing seller API."""
