"""Loopback fakes of external services shared by several test modules."""
