"""Plain RPC handlers: ``(session, principal, request) → response``, testable without gRPC.

Each runs inside the one transaction the servicer opens, checks the caller's role first, and
raises ``CallmeterError`` for anything the caller must fix. One module per service.
"""
