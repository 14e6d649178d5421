"""The worker: a supervisor that holds the gateway stream and a pool of pjsua2 engine processes."""
