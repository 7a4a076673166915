"""Helpers for tests and local demos (a real S3 server on loopback); not used by the pipeline itself."""
