"""The node daemon: agent (lease loop), executor (child process), hardware, blob cache."""
