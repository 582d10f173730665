"""PSI steps (filled in by the PSI integration)."""
