"""One module per scenario: redirect (1-3), proxy (4), sni (5), acme (6), metrics (7), h2 (8), keys
(9), idle (10), registry (11), resume (12). Each `run` measures every server, adds its rows to a
report.Results and appends failures to report.FAILURES."""
