"""Reading what synthpost ships or is given: seed files, the held-out eval sets, JSONL."""
