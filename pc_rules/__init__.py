"""The rule language: eligibility rule files (TOML), the ``where`` grammar, dataset metadata.

Used by the client (to check a rule before submitting), the coordinator (to validate a
job against the catalog) and the nodes (to evaluate their part, and to read the metadata
of the datasets they import). It knows no transport.

Modules: ``rules`` (the rule file), ``catalog`` (a rule against the catalog), ``where``
(the condition syntax) over ``expr`` (conditions as values), ``metadata`` (dataset metadata).
"""
# ``rules`` first: it re-exports ``catalog``, which imports ``rules`` (whichever is imported first).
from pc_rules import rules  # noqa: F401
