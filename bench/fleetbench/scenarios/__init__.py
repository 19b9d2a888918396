"""One module per scenario: redirect (1-3), proxy (4), sni (5), acme (6), resume (7). Each `run` measures
every server, adds its rows to a report.Results and appends failures to report.FAILURES."""
