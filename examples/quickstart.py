"""The smallest permflow program: two chains talking over a topic.

Run it with ``python examples/quickstart.py``.
"""

# The lines between the fmt markers are the README's first snippet, character for character.
# fmt: off
from permflow import InMemoryPubSubConnection, PubSub, Topic

topic_one = Topic("one")
chain_one = Topic.IN.subscribe() | (lambda x: x + 'b') | topic_one.publish()
chain_two = topic_one.subscribe() | (lambda x: x + 'c') | Topic.OUT.publish()

conn = InMemoryPubSubConnection()
pubsub = PubSub(processes=(chain_one, chain_two), connection=conn)

assert pubsub.invoke('a') == ['abc']
# fmt: on

print(pubsub.invoke("a"))
