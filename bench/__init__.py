"""Benchmarks of the ETL jobs against psql, pgbench and a bare arq worker: `python -m bench`."""
