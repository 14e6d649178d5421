"""The `callmeter` command: one subcommand per service, plus `up`, `demo`, `run` and `test`."""
