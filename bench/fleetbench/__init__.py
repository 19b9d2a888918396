"""fleetbench: the code of bench/run (fleetgate side by side with nginx and Caddy, issue 5).

Layers, each importing only from those above it in this list:
    base                      paths, names, counts, log()
    procs                     started processes, recorded commands, ports, wait_until
    measure, install, certs, probes
    servers/                  fleetgate, nginx, caddy, upstream, pebble: configs and starters
    load/                     wrk, sni (scenario 5's TLS client)
    rounds, report            interleaved rounds and paired ratios; the table and RESULTS.md
    scenarios/                redirect (1-3), proxy (4), sni (5), acme (6)
    main                      the command line
"""
