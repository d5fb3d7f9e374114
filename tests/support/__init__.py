"""Helpers the test suites share: databases, worker processes, private servers, files."""
