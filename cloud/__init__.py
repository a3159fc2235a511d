"""citysense cloud side: operator commands, record ingest, the completeness ledger."""
