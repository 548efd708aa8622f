"""What the tests and benchmarks share: a real server in a subprocess, tiny random base models, synthetic adapters, hostile requests."""
