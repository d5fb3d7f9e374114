"""Transfers between accounts: decisions in plan.py, the locked, set-based write in job.py."""
