"""google-cloud-pubsub's private parts: every use of them, checked at import, with the public fallback.

Why: ``SubscriberClient.subscribe`` reopens a streaming pull after every retryable error, forever
and silently; conveyor reports each stream error and gives up after a second one within the
instance ``timeout`` so the supervisor backs off. The only hook is the private
``StreamingPullManager._should_recover``, so the stream is opened as ``subscribe`` does, with a subclass.
Fallback: the public ``subscribe``, watched by a GetSubscription call every ``timeout / 2``;
two failed in a row (or one that is not Transient) end the stream: slower to notice, one call more.

Imported only by the pubsub connector: a config without Pub/Sub never imports google.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from google.cloud.pubsub_v1.subscriber import futures as sub_futures

from conveyor._compat import Choice, choose, installed_version
from conveyor.errors import Transient

log = logging.getLogger("conveyor.pubsub")

TESTED = ((2, 18), (2, 45))
"""google-cloud-pubsub versions the private path is allowed with: [low, high), as pyproject.toml bounds them."""

_HOOKED = "should_recover=self._should_recover"
"""How ``StreamingPullManager.open`` hands the hook to its stream: looked up on self, so a subclass's is used."""

try:
    from google.cloud.pubsub_v1.subscriber._protocol.streaming_pull_manager import (
        StreamingPullManager as _Base,
    )
except ImportError as _e:  # the check below reports it
    _Base = None
    _IMPORT_ERROR: str | None = f"cannot import StreamingPullManager ({_e})"
else:
    _IMPORT_ERROR = None

MANAGER_CLASS: type | None = _Base
"""The library's StreamingPullManager, when it can be imported."""


def feature_problem(manager_class: type | None = _Base) -> str | None:
    """What no longer fits in ``manager_class`` (the library's StreamingPullManager); None when all does."""
    if manager_class is None:
        return _IMPORT_ERROR or "StreamingPullManager is missing"
    name = manager_class.__name__
    hook = getattr(manager_class, "_should_recover", None)
    if not inspect.isfunction(hook) or list(inspect.signature(hook).parameters) != ["self", "exception"]:
        return f"{name}._should_recover(self, exception) is missing"
    init = inspect.signature(manager_class).parameters
    if list(init)[:2] != ["client", "subscription"] or "flow_control" not in init:
        return f"{name}(client, subscription, flow_control=...) has an unknown signature"
    opener = getattr(manager_class, "open", None)
    wanted = {"callback", "on_callback_error"}
    if not inspect.isfunction(opener) or not wanted <= set(inspect.signature(opener).parameters):
        return f"{name}.open(callback, on_callback_error) is missing"
    try:
        source = inspect.getsource(opener)
    except (OSError, TypeError):
        return f"the source of {name}.open is not readable, so its use of _should_recover cannot be checked"
    if _HOOKED not in source:
        return f"{name}.open no longer asks self._should_recover"
    if list(inspect.signature(sub_futures.StreamingPullFuture).parameters) != ["manager"]:
        return "StreamingPullFuture(manager) has an unknown signature"
    return None


def select(manager_class: type | None = _Base, version: str | None = None) -> Choice:
    """The path for ``manager_class`` under google-cloud-pubsub ``version`` (the installed one by default)."""
    return choose(
        "google-cloud-pubsub",
        version or installed_version("google-cloud-pubsub"),
        TESTED,
        feature_problem(manager_class),
        "stream errors are seen through StreamingPullManager._should_recover",
    )


CHOICE = select()

ShouldRecover = Callable[[BaseException], bool]
Probe = Callable[[], Awaitable[object]]


def streaming_pull(
    client: Any,
    subscription: str,
    flow_control: Any,
    callback: Callable[[Any], None],
    *,
    should_recover: ShouldRecover,
    probe: Probe,
    interval: float,
) -> Any:
    """Open a streaming pull; the future it returns ends when the stream does (and ``cancel()`` ends it).

    ``should_recover(error)`` is asked after each retryable stream error and ends the stream by
    returning False. On the public path it is asked after each failed ``probe()`` instead, which
    runs every ``interval`` seconds; call this from the event loop.
    """
    CHOICE.announce(log)
    if CHOICE.private:
        manager = _Manager(client, subscription, flow_control=flow_control)
        manager.hook = should_recover
        future = sub_futures.StreamingPullFuture(manager)
        manager.open(callback=callback, on_callback_error=future.set_exception)
        return future
    return _Watched(
        client.subscribe(subscription, callback, flow_control=flow_control), should_recover, probe, interval
    )


if _Base is not None:

    class _Manager(_Base):  # type: ignore[misc]
        """The library's manager, asking ``hook`` whether to reopen after a retryable error."""

        hook: ShouldRecover

        def _should_recover(self, exception: BaseException) -> bool:
            return bool(super()._should_recover(exception)) and self.hook(exception)


class _Watched(concurrent.futures.Future[Any]):
    """The public ``subscribe`` future, plus a probe that ends it when the server stops answering.

    Done when the library's future is, or when the probe gives up (then with the probe's error,
    and the library's stream is cancelled). ``cancelled()`` says whether ``cancel()`` was called,
    as the library's future does.
    """

    def __init__(self, inner: Any, should_recover: ShouldRecover, probe: Probe, interval: float) -> None:
        super().__init__()
        self._inner = inner
        self._stopped = False
        inner.add_done_callback(self._copy)
        self._task = asyncio.get_running_loop().create_task(self._watch(should_recover, probe, interval))

    def _copy(self, inner: Any) -> None:
        with contextlib.suppress(concurrent.futures.InvalidStateError):  # the probe ended it first
            error = inner.exception()
            if error is None:
                self.set_result(inner.result())
            else:
                self.set_exception(error)

    def cancel(self) -> bool:
        """Stop the stream (as the library's future: non-blocking, done once it has shut down)."""
        self._stopped = True
        self._task.cancel()
        return bool(self._inner.cancel())

    def cancelled(self) -> bool:
        """True once ``cancel()`` was called."""
        return self._stopped

    async def _watch(self, should_recover: ShouldRecover, probe: Probe, interval: float) -> None:
        loop = asyncio.get_running_loop()
        ended = asyncio.Event()

        def wake(_: object) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to wake
                loop.call_soon_threadsafe(ended.set)

        self.add_done_callback(wake)
        failures = 0
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await ended.wait()
            if ended.is_set():
                return
            try:
                await probe()
            except Exception as e:
                failures += 1
                if not should_recover(e) or failures >= 2 or not isinstance(e, Transient):
                    with contextlib.suppress(concurrent.futures.InvalidStateError):
                        self.set_exception(e)
                    self._inner.cancel()
                    return
            else:
                failures = 0
