"""Load generators: wrk (scenarios 1-4, 7, 9), h2load (scenario 8), the random-SNI TLS client of
scenario 5 and the idle-connection client of scenario 10."""
