"""The worker frame: settings, database, logging, the arq worker, the client and the CLI."""
