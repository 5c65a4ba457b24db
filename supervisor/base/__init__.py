"""Foundations every layer uses: the error hierarchy and its exit codes, structured
logging, safe file writes and locks."""
