"""Exports: a dataset's snapshot streamed to a file, written atomically; the nightly run."""
