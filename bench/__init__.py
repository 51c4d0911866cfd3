import os

# The benchmarks' stand-in providers listen on loopback: a host an integration may name only when the
# operator adds it (README, TIDINGS_EXTRA_PROVIDER_HOSTS).
os.environ.setdefault("TIDINGS_EXTRA_PROVIDER_HOSTS", "127.0.0.1")
