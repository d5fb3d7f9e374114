"""Imports: a CSV file (or gzip) into a dataset's table through COPY, rejects quarantined."""
