"""fleetbench: the code of bench/run (fleetgate side by side with nginx and Caddy, issues 5, 14, 16).

Layers, each importing only from those above it in this list:
    base                      paths, names, counts, log()
    procs                     started processes, recorded commands, ports, wait_until
    measure, install, certs, probes
    servers/                  fleetgate, nginx, caddy, upstream, pebble: configs and starters
    load/                     wrk, h2load, sni (scenario 5's TLS client), idle (scenario 10's client)
    rounds, report            interleaved rounds and paired ratios; the table and RESULTS.md
    scenarios/                redirect (1-3), proxy (4), sni (5), acme (6), metrics (7), h2 (8),
                              keys (9), idle (10)
    main                      the command line
"""
