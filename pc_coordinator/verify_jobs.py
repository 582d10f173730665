"""Verification jobs."""
