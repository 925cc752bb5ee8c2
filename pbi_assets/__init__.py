"""PBI's Dagster code location: a thin shell over `pbi_ml`.

Each asset resolves its partition (source x shard), calls one `pbi_ml` stage function and turns the
result into metadata. Heavy ML modules are imported inside stage functions, never at import time
here (the multiprocess executor re-imports this package in every step process).
"""
