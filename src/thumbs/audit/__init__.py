"""Audit: what the feedback holds (balance, voters, conflicts, noise) and the data options that
answer it (class weights, user balance, aggregation)."""

from thumbs.audit.findings import audit

__all__ = ["audit"]
