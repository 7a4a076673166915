"""The output tables: `schemas` (one Arrow schema per table), `layout` (folders, part files, commits, atomic writes), `sink` (exactly-once writes), `reader` (committed rows only)."""
