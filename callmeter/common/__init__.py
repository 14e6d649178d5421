"""What every service shares: settings, logs, errors, the gRPC server factory, stores, TLS."""
