"""The gateway: the only thing workers connect to, one TLS bidirectional stream per worker."""
