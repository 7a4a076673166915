"""molmo-batch: video corpora -> Molmo2 -> grounded Parquet tables. The subpackages follow the data:
source -> video -> model -> results -> tables; run/ drives it; observe/, tools/ and devtools/ sit beside and on top."""
