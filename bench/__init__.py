"""Benchmarks: the pipeline against DuckDB on the same generated data (bench/run.py), and our own
code against the libraries that could replace it (bench/libraries.py)."""
