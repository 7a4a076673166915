"""Commands on top of the pipeline and its tables: `query` (named DuckDB queries), `render` (overlays), `estimate` (the `plan` command), `serve` (Ray Serve online endpoint)."""
