"""Interaction data: reading raw sources, normalizing them into ingest tables, quality checks, splits and
the in-memory id-mapped form models and evaluation consume."""
