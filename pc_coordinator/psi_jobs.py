"""PSI jobs."""
