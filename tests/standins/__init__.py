"""Stand-ins for the providers' HTTP APIs: small servers on loopback that check every request against the
provider's official OpenAPI specification, record it, and answer as scripted; and ``fast_meta``, one that
checks nothing and answers in microseconds, for the chaos tests and the benchmarks."""
