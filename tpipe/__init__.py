"""The `tpipe` command: one entry point that starts any of the services."""
