"""`thumbs iterate`: online rounds on the model's own answers — answer, collect feedback, ingest,
audit, train, evaluate against the round's start and the original model, repeat."""
