"""Development kit: a synthetic city and its plaintext ground truth.

For the demo, benchmarks and tests only. Servers never import this package (a test checks).
"""
