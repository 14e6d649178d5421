"""`python -m services.worker.engine`: one engine process, driven through stdin/stdout."""

from services.worker.engine.engine import main

main()
