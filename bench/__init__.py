"""modelrunner's benchmarks (``python -m bench NAME``); not part of the installed package.

See README.md. Modules: ``stats`` (percentiles, paired ratios), ``alternation`` (A B A B),
``report`` (BENCHMARKS.md sections), ``machine`` (machine description), ``httpclient`` (a lean
h11 client with arrival timestamps), ``services`` (registry, daemon, engine build, test models),
``scenarios/`` (one module per scenario).
"""
