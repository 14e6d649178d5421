"""The public API: tests, runs, results, workers, projects and tokens; authentication and roles."""
