"""walkbook's benchmarks: every figure is a ratio against a reference measured in the same run.

Run them as modules from the repository root (`python -m bench.run_all`), so that
`bench/engine.py` never shadows the `engine` package.
"""
