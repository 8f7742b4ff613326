"""The improver's data: the example store (the only code that speaks SQL), the events
that fill it (`ingest`), gold labels and their fixed split (`gold`), what reviews add
up to (`reviews`), a task's examples (`examples`) and the training lease (`ledger`)."""
