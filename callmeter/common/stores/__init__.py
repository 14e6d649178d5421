"""Stores chosen by URL, one code path each: SQL state, the metrics store, NATS JetStream."""
