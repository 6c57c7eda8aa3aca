"""One module per benchmark; each registers itself with :func:`..registry.register`.

Every module here is imported by the registry on first use, so adding a benchmark is adding
one file that reads the benchmark's published format into :class:`..items.BenchItem`.
"""
