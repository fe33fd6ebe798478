"""Failures: re-raised by default, turned into messages by a ``Topic.ERROR``
subscriber, retried with ``with_retry``, bounded by timeouts and
``max_deliveries``.

Run it with ``python examples/errors_and_retries.py``.
"""

from typing import Any

import anyio

from permflow import PoisonMessageError, PubSub, RunnableLambda, RunTimeoutError, Topic

parsed = Topic("parsed")

# 1. By default a failing step fails the run with its own exception.
strict = PubSub(Topic.IN.subscribe() | int | Topic.OUT.publish())
assert strict.invoke("42") == [42]
try:
    strict.invoke("forty-two")
except ValueError as exc:
    print("re-raised:", repr(exc))
else:
    raise AssertionError("expected ValueError")


# 2. With a Topic.ERROR subscriber, failures become messages and the run goes on.
def explain(record: dict[str, Any]) -> str:
    return f"{record['process']} failed on {record['input']!r}: {record['error']}: {record['message']}"


tolerant = PubSub(
    Topic.IN.subscribe() | parsed.publish_each(),
    parsed.subscribe() | int | Topic.OUT.publish(),
    Topic.ERROR.subscribe() | explain | Topic.OUT.publish(),
)
results = tolerant.invoke(["1", "two", "3"])
print("with an error handler:", results)
assert sorted(r for r in results if isinstance(r, int)) == [1, 3]
assert [r for r in results if isinstance(r, str)] == [
    "parsed.subscribe | int | publish(__out__) failed on 'two': "
    "ValueError: invalid literal for int() with base 10: 'two'"
]

# 3. with_retry: attempts with exponential back-off and jitter, for chosen exceptions.
calls = 0


def flaky(x: int) -> int:
    global calls
    calls += 1
    if calls < 3:
        raise ConnectionError("service busy")
    return x * 2


retried = PubSub(
    Topic.IN.subscribe()
    | RunnableLambda(flaky).with_retry(
        stop_after_attempt=3, initial_wait=0.01, retry_if_exception_type=(ConnectionError,)
    )
    | Topic.OUT.publish()
)
assert retried.invoke(21) == [42] and calls == 3
print(f"retried: succeeded on attempt {calls}")


# 4. Timeouts: per step (step_timeout), per run (timeout); both also per call.
async def slow(x: int) -> int:
    await anyio.sleep(10)
    return x


lazy = PubSub(Topic.IN.subscribe() | slow | Topic.OUT.publish())
try:
    lazy.invoke(1, config={"step_timeout": 0.05})
except TimeoutError:
    print("step_timeout: TimeoutError")
try:
    lazy.invoke(1, config={"timeout": 0.05, "state_id": "late"})
except RunTimeoutError as exc:
    print("timeout:", exc)
# The unfinished delivery stays pending in the stored state; drop it.
assert [m.topic for m in lazy.peek("late")] == ["__in__"]
lazy.delete("late")


# 5. Poison messages: a delivery that failed max_deliveries times is moved to
#    Topic.ERROR instead of being tried again.
def always_fails(x: str) -> str:
    raise RuntimeError(f"cannot handle {x!r}")


poisoned = PubSub(Topic.IN.subscribe() | always_fails | Topic.OUT.publish(), max_deliveries=2)
state = {"state_id": "poison"}
outcomes = []
for value in ("bad", None, None):  # None: retry what is stored, add no input
    try:
        poisoned.invoke(value, config=state)
    except (RuntimeError, PoisonMessageError) as exc:
        outcomes.append(type(exc).__name__)
print("poison:", outcomes)
assert outcomes == ["RuntimeError", "RuntimeError", "PoisonMessageError"]
assert poisoned.invoke(None, config=state) == []  # nothing left to try
(dead,) = [m.value for m in poisoned.peek("poison") if m.topic == "__error__"]
assert dead["input"] == "bad" and dead["error"] == "permflow._errors.PoisonMessageError"
print("dead letter:", dead["message"])
