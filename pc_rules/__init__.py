"""The rule language: eligibility rule files (TOML) and the ``where`` grammar.

Used by the client (to check a rule before submitting), the coordinator (to validate a
job against the catalog) and the nodes (to evaluate their part). It knows no transport.
"""
