"""PBI's Dagster code location, a thin shell over `pbi_ml`: each asset resolves its partition, calls
one `pbi_ml` stage function and turns the result into metadata. No heavy ML import at import time
(the multiprocess executor re-imports this package in every step process)."""
