"""One module per server: how each is configured for each scenario and started.

fleetgate, nginx and caddy are the servers compared; upstream is scenario 4's backend (an nginx);
pebble is scenario 6's ACME CA. A starter writes the config into the given temp dir and returns
the started process (procs.PROCS tracks it)."""
