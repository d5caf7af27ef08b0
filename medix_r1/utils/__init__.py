"""Small shared utilities: the JSONL store and the typed-config machinery."""
