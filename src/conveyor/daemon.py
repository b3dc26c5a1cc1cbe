"""The daemon: instances, flows under one TaskGroup, signals, reload, two-phase shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from conveyor.clock import Schedule, zone
from conveyor.config import Config, Flow, load_config
from conveyor.config.base import FileSourceConfig, MessageSourceConfig
from conveyor.config.schema import Route
from conveyor.errors import ConfigError, ConveyorError, describe
from conveyor.flows.delivery import Deliverer, FanOut, Leg
from conveyor.flows.expect import ExpectationWatcher
from conveyor.flows.filesource import FileSource, FileSourceDeps
from conveyor.flows.intake import IntakeGate
from conveyor.flows.runner import FlowRunner
from conveyor.interfaces import (
    BrokerInstance,
    Context,
    FileSystem,
    Instance,
    MessageSource,
    Source,
    Submit,
    Target,
)
from conveyor.payload.spool import Spool
from conveyor.redact import redact, register_secrets
from conveyor.registry import get as spec_of
from conveyor.registry import target_specs
from conveyor.state import StateStore, open_store
from conveyor.status import StatusBoard
from conveyor.supervisor import Backoff
from conveyor.transport_warnings import TransportWarning, transport_warnings

log = logging.getLogger("conveyor.daemon")


STOP_GRACE = 5.0
"""Seconds a flow's task has to end after its one cancellation before the daemon stops waiting for it."""


async def cancel_once(task: asyncio.Task[None], flow: str) -> bool:
    """The hard stop of a flow's task: cancel it once and wait up to STOP_GRACE; whether it ended.

    Code that swallows a cancellation (a Pub/Sub token refresh once did) would otherwise hold the
    daemon until systemd kills it. Such a task is named in one error, with where it waits, and
    the caller stops waiting for it: cancelling it again would only repeat what it ignores.
    """
    if not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=STOP_GRACE)
    if task.done():
        if not task.cancelled():
            task.result()  # an error it ended with is the daemon's to see
        return True
    log.error(
        "flow still running %.0fs after it was cancelled, %s; no longer waiting for it",
        STOP_GRACE,
        waiting_in(task),
        extra={"flow": flow},
    )
    return False


def waiting_in(task: asyncio.Task[None]) -> str:
    """Where a task waits: its innermost frame outside asyncio."""
    for frame in reversed(task.get_stack()):
        code = frame.f_code
        if f"{os.sep}asyncio{os.sep}" not in code.co_filename:
            return f"waiting in {code.co_name}() at {code.co_filename}:{frame.f_lineno}"
    return "waiting in asyncio"


def run_daemon(config: Config, once: float | None = None) -> int:
    """Run the daemon in a new event loop until it stops; the exit code. With ``once`` (idle
    seconds), run every flow once (see :class:`Daemon`) and exit 0 when all was delivered, else 1.

    When a flow task was left behind, the process exits as soon as the daemon is done:
    ``asyncio.run`` would cancel that task again and wait for it without a limit.
    """

    async def main() -> int:
        daemon = Daemon(config, once=once)
        code = await daemon.run()
        if daemon.left_behind:
            for handler in logging.getLogger().handlers:
                handler.flush()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        return code

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main())


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (``pip install 'conveyor[uvloop]'``) and the
    environment does not say ``CONVEYOR_EVENT_LOOP=asyncio``; None for asyncio's own. Each
    message costs the loop several wake-ups and callbacks: uvloop's are cheaper."""
    if os.environ.get("CONVEYOR_EVENT_LOOP", "").lower() == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


class Addon(Protocol):
    """Something that lives as long as the daemon: the health server, the systemd notifier."""

    async def start(self, daemon: Daemon) -> None:
        """Start; called before flows start."""
        ...

    async def ready(self) -> None:
        """Every flow has started."""
        ...

    async def stop(self) -> None:
        """The daemon is stopping (called before the drain)."""
        ...

    async def close(self) -> None:
        """The drain is over (or start failed): release everything."""
        ...


def make_addons(config: Config) -> list[Addon]:
    """The add-ons a config asks for: the health server (unless ``health.listen`` is null) and
    the systemd notifier (a no-op without ``$NOTIFY_SOCKET``), and traces (with ``traces:``)."""
    from conveyor.systemd import SystemdNotifier

    addons: list[Addon] = []
    if config.health.listen:
        from conveyor.health import HealthServer

        addons.append(HealthServer(config.health.listen))
    addons.append(SystemdNotifier())
    if config.traces is not None:
        from conveyor.traces import Tracing

        addons.append(Tracing(config.traces))
    return addons


GC_THRESHOLD = (50_000, 10, 10)
"""The cyclic collector's thresholds while the daemon runs: Python's default (700, 10, 10) runs a
young-generation pass every few messages, a cost per message that finds few cycles. Cycles are still
collected, each pass over at most 50,000 young objects (see docs/performance-notes.md)."""


@contextlib.contextmanager
def fewer_gc_passes() -> Iterator[None]:
    """Freeze what start-up allocated (modules, config: long-lived, so full collections stop
    walking them; reference counting still frees them) and raise the collection thresholds;
    undone on exit, so a daemon run in-process (the tests) leaves the interpreter as it was."""
    before = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


def intake_folders(config: Config) -> list[Path]:
    """The folders whose disks the free-space floor watches: the spool's, and the SQLite store's."""
    folders = [Path(config.spool_dir)]
    if not config.state.startswith(("postgresql://", "postgres://")):
        folders.append(Path(config.state).parent)
    return folders


class Daemon:
    """Runs every enabled flow of a config until SIGTERM/SIGINT; SIGHUP reloads.

    With ``once`` (``run --once``, idle seconds) each file flow lists its folder once, each
    message flow consumes until nothing came for ``once`` seconds; the daemon stops when every
    flow delivered what it took. The guarantees are the daemon's: the ledger records each step,
    so a run killed half-way leaves nothing lost and the next run finishes the work.
    """

    def __init__(self, config: Config, *, once: float | None = None) -> None:
        self.config = config
        self.once = once
        self.unfinished: list[str] = []
        """After a ``once`` run: why not everything was delivered (empty when all was)."""
        self.status = StatusBoard()
        self.spool = Spool(Path(config.spool_dir), config.spool_threshold, config.spool_max)
        self.owner = config.replica or f"{socket.gethostname()}:{os.getpid()}"
        self.store: StateStore = open_store(config.state, self.owner)
        self.gate = IntakeGate(intake_folders(config), config.min_free_space, self.status)
        self.ctx = Context(spool=self.spool, status=self.status)
        self.instances: dict[str, Instance] = {}
        self.flows: dict[str, tuple[FlowRunner, asyncio.Task[None]]] = {}
        self.watchers: dict[str, asyncio.Task[None]] = {}
        """Each running flow's expected-arrivals watch (flows with ``expect``)."""
        self.addons: list[Addon] = make_addons(config)
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._tg: asyncio.TaskGroup | None = None
        self._signals = 0
        self._draining: list[tuple[FlowRunner, asyncio.Task[None]]] = []
        self.left_behind: set[asyncio.Task[None]] = set()
        """Flow tasks that outlived their cancellation: referenced here, no longer waited for."""
        self.weak: list[TransportWarning] = []
        """The config's weak transport settings (logged at start and on reload, listed in /status)."""

    # -- life cycle ---------------------------------------------------------------
    async def run(self) -> int:
        """Run until stopped; returns the exit code (0 after a clean drain)."""
        register_secrets(self.config.secrets())
        self._report_weak_transport()
        self.spool.prepare()
        await self.store.open()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal)
        loop.add_signal_handler(signal.SIGHUP, self._reload.set)
        started: list[Addon] = []
        try:
            for addon in self.addons:
                await addon.start(self)
                started.append(addon)
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                for flow in self.config.flows.values():
                    if flow.enabled:
                        self._start_flow(flow)
                housekeeping = tg.create_task(self._housekeeping(), name="housekeeping")
                log.info(
                    "conveyor started: %d flows, %d instances, state %s, event loop %s",
                    len(self.flows),
                    len(self.config.instances),
                    redact(self.config.state),
                    # uvloop or asyncio (see loop_factory): what an operator asks first about a loop fault
                    type(asyncio.get_running_loop()).__module__.partition(".")[0],
                )
                for addon in self.addons:
                    await addon.ready()
                with fewer_gc_passes():
                    if self.once is None:
                        await self._wait_for_stop()
                    else:
                        await self._wait_for_flows()
                for addon in self.addons:
                    await addon.stop()
                await self._shutdown()
                housekeeping.cancel()
                if self.once is not None:
                    await self._check_once()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await self._close_instances(list(self.instances))
            for addon in reversed(started):
                await addon.close()
            await self.store.close()
        log.info("conveyor stopped")
        if self.once is not None:
            for why in self.unfinished:
                log.error("not everything was delivered: %s", why)
            return 1 if self.unfinished else 0
        return 0

    def _report_weak_transport(self) -> None:
        """Log each weak setting of the config once, one line naming its key, and list them in /status."""
        old = set(self.status.config_warnings)
        for st in self.status.instances.values():
            st.warnings = [w for w in st.warnings if w not in old]
        self.status.config_warnings = []
        self.weak = transport_warnings(self.config)
        for w in self.weak:
            self.status.warn(str(w), w.instance, from_config=True)
            log.warning("weak transport: %s", w, extra={"instance": w.instance} if w.instance else None)

    def request_stop(self) -> None:
        """Begin the two-phase shutdown (what SIGTERM does)."""
        self._stop.set()

    def _on_stop_signal(self) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("second stop signal: not waiting for deliveries any longer")
            for runner, _ in [*self.flows.values(), *self._draining]:
                runner.abort()  # the drain ends now, and then the flow's task is cancelled (once)
        self._stop.set()

    async def _wait_for_stop(self) -> None:
        while not self._stop.is_set():
            stop = asyncio.ensure_future(self._stop.wait())
            reload = asyncio.ensure_future(self._reload.wait())
            await asyncio.wait({stop, reload}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            reload.cancel()
            if self._reload.is_set() and not self._stop.is_set():
                self._reload.clear()
                await self.reload()

    async def _wait_for_flows(self) -> None:
        """``once``: until every flow's task ended, or a stop signal came."""
        stop: asyncio.Future[Any] = asyncio.ensure_future(self._stop.wait())
        try:
            tasks: set[asyncio.Future[Any]] = {task for _, task in self.flows.values()}
            while tasks and not self._stop.is_set():
                _, tasks = await asyncio.wait(tasks | {stop}, return_when=asyncio.FIRST_COMPLETED)
                tasks.discard(stop)
        finally:
            stop.cancel()

    async def _check_once(self) -> None:
        """``once``: note each flow that did not deliver everything (for the exit code)."""
        if self._stop.is_set():
            self.unfinished.append("stopped by a signal before the work was done")
        for name, flow in self.config.flows.items():
            if not flow.enabled:
                continue
            st = self.status.flows.get(name)
            if st is not None and st.state == "failed":
                self.unfinished.append(f"flow {name}: {st.last_error or 'failed'}")
                continue
            failed = await self.store.list(name, "failed", 1)
            if failed:
                self.unfinished.append(f"flow {name}: items failed (see conveyor ledger {name} --state failed)")
            elif st is not None and st.failed:
                self.unfinished.append(f"flow {name}: {st.failed} items failed")

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(3600)
            try:
                n = await self.store.prune(time.time() - self.config.retention)
                if n:
                    log.info("pruned %d settled ledger rows older than the retention", n)
            except Exception as e:
                log.warning("pruning the ledger failed: %s", redact(str(e)))

    async def _shutdown(self) -> None:
        log.info("stopping: draining %d flows (up to %.0fs)", len(self.flows), self.config.shutdown_timeout)
        await asyncio.gather(*(self._stop_flow(name) for name in list(self.flows)))
        for name in list(self.watchers):
            self._unwatch(name)  # the watches of flows that could not start

    # -- instances and flows --------------------------------------------------------
    def instance(self, name: str) -> Instance:
        """The live instance of that name, created on first use."""
        rt = self.instances.get(name)
        if rt is None:
            cfg = self.config.instances[name]
            spec = spec_of(cfg.type)
            self.status.add_instance(name, cfg.type, cfg.describe())
            for w in self.weak:
                if w.instance == name:
                    self.status.warn(str(w), name, from_config=True)
            rt = self.instances[name] = spec.load_factory()(name, cfg, self.ctx)
        return rt

    def _file_system(self, name: str) -> FileSystem:
        rt = self.instance(name)
        if not isinstance(rt, FileSystem):
            raise TypeError(f"instance '{name}' is no file system: its connector lacks the FileSystem methods")
        return rt

    def _broker(self, name: str) -> BrokerInstance:
        rt = self.instance(name)
        if not isinstance(rt, BrokerInstance):
            raise TypeError(f"instance '{name}' is no broker: its connector lacks source() and target()")
        return rt

    def _target(self, flow: Flow, route: Route | None = None) -> Target:
        """The target of ``route`` (default: the flow's one ``target:``), behind the flow's steps."""
        target = self._bare_target(flow, route)
        if not flow.steps:
            return target
        from conveyor.steps import ProgressBook, StepsTarget

        book = ProgressBook(self.store, flow.name, route.name if route is not None else "")
        return StepsTarget(target, flow.steps, self.spool, book, flow.timezone)

    def _bare_target(self, flow: Flow, route: Route | None = None) -> Target:
        route = route or flow.routes[0]
        kind = target_specs().get(route.kind)
        if kind is not None:
            config = route.target
            if flow.steps and flow.steps[0].collect is not None and "filename" not in config.model_fields_set:
                # collect names each file by its own template: the directory target's default
                # ({id}) would drop that name, which nobody setting it expects
                config = config.model_copy(update={"filename": "{name}"})
            return kind.load_factory()(flow.name, config, self.ctx)
        iname = route.target.instance
        if spec_of(self.config.instances[iname].type).kind == "file":
            from conveyor.targets.upload import UploadTarget

            return UploadTarget(flow.name, route.target, self._file_system(iname))
        return self._broker(iname).target(flow.name, route.target)

    def _deliverer(self, flow: Flow) -> tuple[Deliverer, Callable[[], Awaitable[None]], float | None]:
        """A flow's deliverer (to its one target, or to each of its ``targets:``), what closes its
        targets, and its longest delivery timeout."""
        legs: list[Leg] = []
        for route in flow.routes:
            timeout = getattr(route.target, "timeout", None)
            kind = target_specs().get(route.kind)
            own = None if kind is not None and kind.own_timeout else timeout
            target = self._target(flow, route) if flow.fan_out else self._target(flow)
            legs.append(Leg(route.name, target, route.when, own))
        timeouts = [t for r in flow.routes if (t := getattr(r.target, "timeout", None))]
        longest = max(timeouts) if timeouts else None
        attempts, backoff = flow.retry.attempts, Backoff.from_config(flow.retry)
        lease = max(300.0, 2 * (longest or 0))

        async def close() -> None:
            for leg in legs:
                await leg.target.close()

        if not flow.fan_out:
            one = legs[0]
            deliverer = Deliverer(
                flow.name,
                one.target,
                self.store,
                self.status,
                attempts=attempts,
                backoff=backoff,
                timeout=one.timeout,
                lease=lease,
            )
        else:
            deliverer = FanOut(
                flow.name, legs, self.store, self.status, attempts=attempts, backoff=backoff, lease=lease
            )
        return deliverer, close, longest

    def build_flow(self, flow: Flow) -> FlowRunner:
        """Wire a flow's source, deliverer and targets."""
        src = flow.source
        icfg = self.config.instances[src.instance]
        message = spec_of(icfg.type).kind == "message"
        source_rt = self._broker(src.instance) if message else self._file_system(src.instance)
        st = self.status.add_flow(flow.name)
        deliverer, close_targets, timeout = self._deliverer(flow)
        st.delivery_timeout = timeout

        def runner(
            max_in_flight: int,
            files: Callable[[Submit], Source] | None = None,
            messages: tuple[MessageSource, MessageSourceConfig] | None = None,
        ) -> FlowRunner:
            """The flow's runner over its file source or its broker consumer; the rest is shared."""
            return FlowRunner(
                flow.name,
                max_in_flight=max_in_flight,
                status=self.status,
                deliverer=deliverer,
                on_close=close_targets,
                files=files,
                messages=messages,
                gate=self.gate,
                once=self.once,
            )

        if isinstance(source_rt, BrokerInstance):
            assert isinstance(src, MessageSourceConfig)
            consumer = source_rt.source(flow.name, src)
            collect = flow.steps[0].collect if flow.steps else None
            # a collect step's messages wait in their batch, each one in delivery meanwhile: room for
            # two batches, one filling while the other is written
            in_flight = max(flow.max_in_flight, 2 * collect.max_messages if collect else 0)
            return runner(in_flight, messages=(consumer, src))
        assert isinstance(src, FileSourceConfig)
        schedule = None
        if src.schedule is not None:
            schedule = Schedule(src.schedule, zone(flow.timezone or "UTC"))
            st.schedule = src.schedule
        else:
            st.poll_interval = src.poll_interval

        def file_source(submit: Submit) -> FileSource:
            deps = FileSourceDeps(
                deliverer=deliverer,
                store=self.store,
                spool=self.spool,
                status=self.status,
                submit=submit,
                gate=self.gate,
            )
            return FileSource(
                flow=flow.name,
                instance=src.instance,
                instance_type=icfg.type,
                fs=source_rt,
                config=src,
                deps=deps,
                schedule=schedule,
            )

        return runner(flow.max_in_flight, files=file_source)

    def _start_flow(self, flow: Flow) -> None:
        assert self._tg is not None
        self._unwatch(flow.name)
        if flow.expect is not None:
            # Watched even when the flow cannot start below: its files will not come then either.
            watcher = ExpectationWatcher(flow.name, flow.expect, flow.timezone, self.store, self.status)
            self.watchers[flow.name] = self._tg.create_task(self._watch(watcher), name=f"expect:{flow.name}")
        try:
            runner = self.build_flow(flow)
        except Exception as e:
            # One flow that cannot be built (an instance whose library or settings fail at
            # construction) must not take the others down: it shows as failed in /status and
            # /readyz, and a reload with a fixed config starts it.
            why = redact(describe(e))
            st = self.status.add_flow(flow.name)
            st.state = "failed"
            self.status.flow_error(flow.name, f"cannot start: {why}")
            log.error(
                "flow cannot start: %s", why, extra={"flow": flow.name}, exc_info=not isinstance(e, ConveyorError)
            )
            return
        task = self._tg.create_task(self._run_flow(runner, flow.name), name=f"flow:{flow.name}")
        self.flows[flow.name] = (runner, task)
        log.info("flow started", extra={"flow": flow.name})

    def _unwatch(self, name: str) -> None:
        """End a flow's expected-arrivals watch (it ends at its next await)."""
        task = self.watchers.pop(name, None)
        if task is not None:
            task.cancel()

    async def _watch(self, watcher: ExpectationWatcher) -> None:
        """A flow's expected-arrivals watch: its trouble is logged, never the daemon's end."""
        try:
            await watcher.run()
        except Exception:
            log.exception("expected arrivals: the watch ended", extra={"flow": watcher.flow})

    async def _run_flow(self, runner: FlowRunner, name: str) -> None:
        """Run a flow in a task of its own; when this is cancelled (the hard stop), cancel that
        task once and, should it outlive STOP_GRACE, leave it behind: the TaskGroup must not
        wait for it."""
        task = asyncio.create_task(runner.run(), name=f"flow:{name}:run")
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if not await cancel_once(task, name):
                self.left_behind.add(task)
            raise

    async def _stop_flow(self, name: str) -> None:
        runner, task = self.flows.pop(name)
        watcher = self.watchers.pop(name, None)
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        if self.once is not None and runner.errors:
            self.unfinished.append(f"flow {name}: {runner.errors} items or listings ended in an error")
        self._draining.append((runner, task))  # a second stop signal aborts it too
        try:
            if self._signals > 1:
                runner.abort()
            await runner.drain(self.config.shutdown_timeout)
            # The soft stop may have ended the flow already; otherwise this is the hard stop, once.
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        finally:
            self._draining.remove((runner, task))  # else every reload would keep its old runners
        try:
            await runner.close()
        except Exception as e:
            log.warning("closing target: %s", redact(str(e)), extra={"flow": name})
        log.info("flow stopped", extra={"flow": name})

    async def _close_instances(self, names: list[str]) -> None:
        for name in names:
            rt = self.instances.pop(name, None)
            if rt is not None:
                try:
                    await rt.close()
                except Exception as e:
                    log.warning("closing instance: %s", redact(str(e)), extra={"instance": name})

    # -- reload ----------------------------------------------------------------------
    async def reload(self) -> bool:
        """Re-read the config: start added flows, stop removed ones, restart changed ones."""
        try:
            new = await asyncio.to_thread(load_config, self.config.path)
        except ConfigError as e:
            log.error("reload refused, the running config is kept: %s", redact(str(e)))
            return False
        old = self.config
        changed = {n for n, c in old.instances.items() if new.instances.get(n) != c}

        def uses_changed(f: Flow) -> bool:
            return f.source.instance in changed or any((r.instance or "") in changed for r in f.routes)

        stop = [
            n
            for n, f in old.flows.items()
            if n in self.flows and (new.flows.get(n) != f or uses_changed(f) or not new.flows[n].enabled)
        ]
        await asyncio.gather(*(self._stop_flow(n) for n in stop))
        for n in stop:
            if n not in new.flows:
                self.status.remove_flow(n)
        for n in [n for n in self.watchers if n not in self.flows]:
            self._unwatch(n)  # a flow that could not start: started again below, or gone
        await self._close_instances([n for n in changed if n in self.instances])
        self.config = new
        self.gate.set_floor(new.min_free_space)
        if new.traces != old.traces:
            # The exporter lives as long as the daemon (an add-on, like the health server).
            log.warning("traces: the changed settings take effect at the next start")
        register_secrets(new.secrets())
        self._report_weak_transport()
        started = []
        for name, flow in new.flows.items():
            if flow.enabled and name not in self.flows:
                self._start_flow(flow)
                started.append(name)
        log.info(
            "reloaded: %d flows stopped, %d started, %d untouched",
            len(stop),
            len(started),
            len(self.flows) - len(started),
        )
        return True
