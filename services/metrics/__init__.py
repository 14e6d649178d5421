"""metrics-ingest: JetStream → ClickHouse, and the read side of the metrics store."""
