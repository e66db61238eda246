"""Feedback data: ingest logs into events, audit them, load training examples."""
