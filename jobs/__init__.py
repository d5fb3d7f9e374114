"""The ETL jobs: imports, upserts, exports, transfers and the nightly export."""
