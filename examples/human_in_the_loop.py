"""Human in the loop: stop a run to ask a person, resume it with the answer.

A step publishes a question on ``Topic("ask")``. The consumer streams the run,
sees the question, leaves the stream (which stops the run), asks a human, and
resumes the same state id by publishing the answer on ``Topic("answer")``.

    python examples/human_in_the_loop.py          # the simulated human says "yes"
    python examples/human_in_the_loop.py no       # or answer yourself
"""

import sys
import threading
import uuid

from permflow import PubSub, RunnableLambda, Topic

ask, answer, audit = Topic("ask"), Topic("answer"), Topic("audit")
human_replied = threading.Event()


def propose(request: str) -> dict[str, str]:
    """Prepare the action and ask before doing anything irreversible."""
    return {"request": request, "question": f"Send the refund for {request}?"}


def decide(reply: str) -> str:
    if reply.strip().lower() in {"y", "yes"}:
        return "refund sent"
    return "refund cancelled"


def record(request: str) -> str:
    """A slow side job (an audit write) still busy when the consumer leaves."""
    human_replied.wait(timeout=30)
    return f"audited {request}"


pubsub = PubSub(
    Topic.IN.subscribe() | propose | ask.publish(),
    Topic.IN.subscribe() | RunnableLambda(record, execution="thread") | audit.publish(),
    answer.subscribe() | decide | Topic.OUT.publish(),
    inputs=[answer],  # fed from outside: the human's reply, sent with invoke(..., topic=answer)
)


def human(question: str) -> str:
    """Stands in for a real prompt (a form, a chat message, ``input()``)."""
    return sys.argv[1] if len(sys.argv) > 1 else "yes"


state_id = f"refund-{uuid.uuid4().hex[:8]}"

# 1. Run until the question appears, then leave the stream: the run stops
#    right at the break, and the unfinished audit job stays pending.
question = None
with pubsub.stream("order #1042", config={"state_id": state_id}) as messages:
    for message in messages:
        print(f"  {message.topic}: {message.value!r}")
        if message.topic == ask:
            question = message.value["question"]
            break
assert question == "Send the refund for order #1042?"

# 2. Ask the human, for as long as it takes (the run's state is stored).
reply = human(question)
print(f"asked {question!r}, human said {reply!r}")

human_replied.set()

# 3. Resume the same state id with the answer on its own topic; the pending
#    audit job is redelivered and finishes too.
result = pubsub.invoke(reply, config={"state_id": state_id}, topic=answer)
print("result:", result)
assert result == [decide(reply)]

# The log holds each message exactly once: nothing lost, nothing duplicated.
log = pubsub.peek(state_id)
topics = [m.topic for m in log]
print("log:", topics)
assert sorted(topics) == sorted(["__in__", "ask", "answer", "audit", "__out__"]), topics
assert topics[:2] == ["__in__", "ask"]
assert [m.value for m in log if m.topic == audit] == ["audited order #1042"]
assert [m.value for m in log if m.topic == Topic.OUT] == [decide(reply)]

pubsub.delete(state_id)
assert pubsub.peek(state_id) == []
