"""Fan out, then join: one input split into many messages, handled by several
subscribers concurrently, collected by a ``join()`` once the run is idle.

    python examples/fanout_join.py
"""

import time

from permflow import PubSub, RunnableLambda, Topic

urls, pages, sizes = Topic("urls"), Topic("pages"), Topic("sizes")


def fetch(url: str) -> dict[str, str]:
    """A blocking call (think HTTP): sync steps like this run in worker threads."""
    time.sleep(0.2)
    return {"url": url, "body": url.split("//")[1] * 3}


def report(items: list[dict[str, int]]) -> dict[str, int]:
    """Runs once with every message of ``sizes``, after all fetches finished."""
    return {item["url"]: item["size"] for item in sorted(items, key=lambda i: i["url"])}


pubsub = PubSub(
    # one input message becomes one message per URL
    Topic.IN.subscribe() | urls.publish_each(),
    # every URL message is fetched by its own delivery, concurrently
    urls.subscribe() | RunnableLambda(fetch, execution="thread") | pages.publish(),
    # two subscribers of the same topic each see every page
    pages.subscribe() | (lambda page: {"url": page["url"], "size": len(page["body"])}) | sizes.publish(),
    pages.subscribe() | (lambda page: page["url"].startswith("https")) | Topic("secure").publish(),
    # the barrier: once, with the list of all sizes, when nothing else is left to do
    sizes.join() | report | Topic.OUT.publish(),
)

inputs = ["https://a.example", "https://bb.example", "http://ccc.example", "https://dd.example"]
started = time.perf_counter()
(result,) = pubsub.invoke(inputs)
elapsed = time.perf_counter() - started

print("sizes:", result)
assert result == {url: 3 * len(url.split("//")[1]) for url in inputs}
# four 0.2 s fetches overlapped instead of taking 0.8 s one after another
print(f"fetched {len(inputs)} pages in {elapsed:.2f}s")
assert elapsed < 0.6, elapsed

# A join sees each message once: a second input in the same state id joins
# only the new sizes.
state = {"state_id": "crawl"}
assert pubsub.invoke(["https://a.example"], config=state) == [{"https://a.example": 27}]
assert pubsub.invoke(["https://bb.example"], config=state) == [{"https://bb.example": 30}]
print("joined per call:", [m.value for m in pubsub.peek("crawl") if m.topic == "__out__"])
