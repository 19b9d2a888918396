"""Load generators: wrk (scenarios 1-4) and the random-SNI TLS client of scenario 5."""
