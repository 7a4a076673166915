"""Infrastructure every stage uses: fsspec storage (`storage`), retries with backoff (`retry`), and masking of credentials in anything printed or written (`secrets`)."""
