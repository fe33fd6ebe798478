"""Topics, the heads that start a chain, and the steps that publish."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, final

from ._context import step_context
from ._errors import DefinitionError
from ._filter import Predicate, check_predicate, predicate_name
from ._runnable import Config, Runnable, coerce

if TYPE_CHECKING:
    from ._process import Process

__all__ = ["Head", "Publish", "PublishEach", "Route", "Topic", "route"]

IN_NAME, OUT_NAME, ERROR_NAME = "__in__", "__out__", "__error__"


@final
class Topic:
    """A named channel. ``Topic.IN``, ``Topic.OUT`` and ``Topic.ERROR`` are
    ordinary topics with reserved names."""

    IN: ClassVar[Topic]
    OUT: ClassVar[Topic]
    ERROR: ClassVar[Topic]

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not name.strip():
            raise DefinitionError(f"a topic name must be a non-empty string, got {name!r}")
        self.name = name

    def subscribe(self, *, name: str | None = None, when: Predicate | None = None) -> Head:
        """Start a chain that runs once per message published on this topic.

        ``when``: a plain function of the message's value; the chain runs only
        for messages it returns true for. The others are done for this chain
        (never redelivered to it, nothing published); other subscribers of the
        topic still get them."""
        if self.name == OUT_NAME:
            raise DefinitionError(
                "cannot subscribe to Topic.OUT: it holds the results of invoke(); "
                "publish to another topic and subscribe to that"
            )
        return Head(self, join=False, name=name, when=when)

    def join(self, *, name: str | None = None, when: Predicate | None = None) -> Head:
        """Start a chain that runs once, with the list of all not-yet-joined
        messages of this topic, whenever the run is otherwise idle.

        ``when``: only messages whose value it returns true for are joined
        (the others are never joined by this chain); when none is, the chain
        does not run."""
        if self.name == OUT_NAME:
            raise DefinitionError("cannot join Topic.OUT: it holds the results of invoke()")
        return Head(self, join=True, name=name, when=when)

    def publish(self) -> Publish:
        """A step that publishes its input here and passes it on unchanged."""
        _check_publishable(self)
        return Publish(self)

    def publish_each(self) -> PublishEach:
        """A step that publishes each element of its (iterable) input here."""
        _check_publishable(self)
        return PublishEach(self)

    def __eq__(self, other: object) -> bool:
        """Equal to a Topic of the same name, and to the name itself, so that
        ``message.topic == ask`` works (``Message.topic`` is the name)."""
        if isinstance(other, Topic):
            return other.name == self.name
        if isinstance(other, str):
            return other == self.name
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"Topic({self.name!r})"


Topic.IN = Topic(IN_NAME)
Topic.OUT = Topic(OUT_NAME)
Topic.ERROR = Topic(ERROR_NAME)


def _check_publishable(topic: Topic) -> None:
    if topic.name == IN_NAME:
        raise DefinitionError(
            "cannot publish to Topic.IN: it only carries the input of invoke(); publish to another topic"
        )


@final
class Head:
    """``topic.subscribe()`` or ``topic.join()``: the start of a chain;
    ``when`` filters the messages it runs on (None: every message)."""

    __slots__ = ("join", "name", "topic", "when")

    def __init__(self, topic: Topic, *, join: bool, name: str | None, when: Predicate | None = None) -> None:
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise DefinitionError(f"a process name must be a non-empty string, got {name!r}")
        self.topic = topic
        self.join = join
        self.name = name
        self.when = check_predicate(when, f"{topic!r}.{'join' if join else 'subscribe'}()")

    def __or__(self, step: Any) -> Process:
        from ._process import Process

        return Process(self, (coerce(step),))

    @property
    def kind(self) -> str:
        """``subscribe`` or ``join``, with its predicate if any: how derived
        process names start (``a.subscribe(when=is_big) | ...``)."""
        kind = "join" if self.join else "subscribe"
        return kind if self.when is None else f"{kind}(when={predicate_name(self.when)})"

    def __repr__(self) -> str:
        return f"{self.topic!r}.{self.kind if self.when is not None else self.kind + '()'}"


class Publish(Runnable):
    """Publishes its input to ``topic`` (a no-op outside a run); returns it."""

    def __init__(self, topic: Topic) -> None:
        self.topic = topic

    @property
    def name(self) -> str:
        return f"publish({self.topic.name})"

    async def ainvoke(self, input: Any, config: Config = None) -> Any:
        ctx = step_context(config)
        if ctx is not None:
            ctx.publish(self.topic.name, input)
        return input

    def _publishes(self) -> Iterator[str | None]:
        yield self.topic.name


class PublishEach(Publish):
    """Publishes each element of its iterable input to ``topic``; returns the input."""

    @property
    def name(self) -> str:
        return f"publish_each({self.topic.name})"

    async def ainvoke(self, input: Any, config: Config = None) -> Any:
        ctx = step_context(config)
        if ctx is not None:
            for item in input:
                ctx.publish(self.topic.name, item)
        return input


TopicChoice = Topic | str | Iterable[Topic | str] | None


class Route(Runnable):
    """Publishes its input to the topic(s) chosen by ``selector(input)``."""

    def __init__(self, selector: Callable[[Any], TopicChoice], topics: Iterable[Topic] | None = None) -> None:
        if not callable(selector):
            raise DefinitionError(f"route() needs a function choosing a topic, got {selector!r}")
        self.selector = selector
        self.topics = None if topics is None else tuple(topics)
        for topic in self.topics or ():
            _check_publishable(topic)

    @property
    def name(self) -> str:
        return f"route({getattr(self.selector, '__qualname__', 'selector')})"

    def _chosen(self, input: Any) -> list[str]:
        choice = self.selector(input)
        if choice is None:
            return []
        items = [choice] if isinstance(choice, (Topic, str)) else list(choice)
        names = [item.name if isinstance(item, Topic) else Topic(item).name for item in items]
        for name in names:
            if name == IN_NAME:
                raise DefinitionError(f"{self.name} chose Topic.IN; it cannot be published to")
            if self.topics is not None and name not in {t.name for t in self.topics}:
                declared = ", ".join(t.name for t in self.topics)
                raise DefinitionError(
                    f"{self.name} chose topic {name!r}, which is not among its declared topics ({declared})"
                )
        return names

    async def ainvoke(self, input: Any, config: Config = None) -> Any:
        names = self._chosen(input)
        ctx = step_context(config)
        if ctx is not None:
            for name in names:
                ctx.publish(name, input)
        return input

    def _publishes(self) -> Iterator[str | None]:
        if self.topics is None:
            yield None
        else:
            for topic in self.topics:
                yield topic.name


def route(selector: Callable[[Any], TopicChoice], *, topics: Iterable[Topic] | None = None) -> Route:
    """Conditional routing: publish the input to the topic ``selector`` picks.

    ``selector(value)`` returns a ``Topic`` (or a list of them, or None to drop
    the value). Declare the possible ``topics`` so that the graph can show the
    edges and a wrong choice fails loudly::

        chain = Topic.IN.subscribe() | route(
            lambda n: big if n > 10 else small, topics=[big, small]
        )
    """
    return Route(selector, topics)
