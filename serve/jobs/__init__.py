"""Training through the server: token-guarded jobs that retrain in a child process (DESIGN.md)."""
