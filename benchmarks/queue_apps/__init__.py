"""The job queues of ``python -m benchmarks.queues``: the same 3-step pipeline
written as each one's documentation shows. Each module runs in its own
virtualenv (``requirements-<name>.txt``); they share this small contract:

* ``BENCH_REDIS_URL`` — the Redis the benchmark started for them;
* ``BENCH_LOOPS`` — turns of the pure-Python loop in the middle step
  (0: the trivial pipeline, ``x + 1`` three times);
* the last step pushes ``[i, value, finished_at]`` (JSON, wall-clock time)
  to the Redis list ``bench:sink``, where the submitter collects it.
"""
