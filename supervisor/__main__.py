"""`python -m supervisor` is the same as the `agent-supervisor` console script."""

from supervisor.cli.app import main

if __name__ == "__main__":
    main()
