"""The peers' side of the benchmark: scripts that run in benchmarks/.peers/ (see benchmarks/README.md)."""
