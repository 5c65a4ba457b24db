"""The gate service every mode asks (CLI, status, operators, daemon), with its inputs
(control-plane probe, Docker inspection), operators' authority and metrics."""
