"""The benchmark of issue 3: the pipeline against DuckDB on the same generated data (bench/run.py)."""
