"""permflow's benchmark suite: ``python -m benchmarks`` (full) or ``--quick`` (CI).

Every system runs in a worker subprocess of its own; the coordinator
(``__main__``) interleaves their rounds and compares medians measured in the
same run. This package imports only the standard library, so that workers can
run in virtualenvs that do not have permflow installed.
"""
