"""Verification steps."""
