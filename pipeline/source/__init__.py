"""Where videos come from: `refs` (VideoRef and its stable id), `listing` (folders and prefixes), `shards` (WebDataset tars), `manifest` (tables of URIs)."""
