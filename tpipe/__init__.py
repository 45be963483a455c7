"""The `tpipe` command and client: service entry points, people commands, `tpipe.client`."""
