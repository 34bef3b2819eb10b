"""latigo's database: schema, engines, prediction storage and the task ledger."""
