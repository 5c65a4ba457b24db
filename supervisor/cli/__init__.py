"""The command line: parse, call, print, exit; the only place errors become exit codes."""
