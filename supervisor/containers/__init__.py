"""The Docker side: the supervisor daemon that restarts the agent's container through
the gate, compose files, and doctor."""
