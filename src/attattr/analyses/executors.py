"""Running a dataset job's shards on a Ray cluster.

    with RayExecutor("10.0.0.1:6379", workers=8, cpus_per_worker=4) as executor:
        records = runs.run(job, examples, model=model, tokenizer=tokenizer, store=store,
                           executor=executor, model_source="minilm-rt", batch_size=8)

* Each worker is a Ray actor that loads the model once: from `model_source` (a recipe name, or a
  directory every node can read) with `attattr.models.load`, or, with `ship_model=True`, from the
  driver's own model sent once through Ray's object store. The driver's tokenizer is sent once too,
  so every worker cuts and pads exactly as the plan did. Torch in a worker uses as many threads as
  CPUs it was given (no oversubscription); with GPUs it runs on its GPU.
* Shards come from the runner's plan, one at a time per worker (an idle worker takes the next); the
  records come back to the driver, where the runner appends them to the store. The numbers are those
  of the single-process run: same shards, same batches, same model.
* A worker that dies (killed, out of memory, node lost) costs only its current shard: the shard goes
  back to the queue, a replacement worker starts, and the run goes on; a shard whose worker died
  MAX_SHARD_ATTEMPTS times is reported as failed (it may be what kills them). Each shard is yielded
  once, so nothing is counted twice. A shard whose function raises (bad input) is reported to the
  runner as `ShardError`, with the worker's exception as cause.
* `address`: "host:port" of a running cluster, "auto" (the cluster this machine belongs to, or
  RAY_ADDRESS), or "local" (start a one-machine cluster here, bound to 127.0.0.1, usage stats off,
  stopped on close). An address that does not answer as a Ray head fails within `connect_timeout`
  seconds (CONNECT_TIMEOUT by default), with one line.

Ray is an optional dependency (`pip install 'attattr[ray]'`); it is imported only here, on first use.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import AttattrError, InputError, ModelError
from .runs import Job, Record, Shard, ShardError, run_shard

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

RAY_EXTRA = "attattr[ray]"
CONNECT_TIMEOUT = 15.0  # seconds: an address that does not answer as a Ray head fails after this
START_TIMEOUT = 600.0  # seconds for the first worker to load the model (big models load slowly)
MAX_SHARD_ATTEMPTS = 3  # a shard whose worker died this many times is reported as failed
KEYWORDS = ("local", "auto")

# What `--ray local` sets for the processes of the cluster it starts: bind to loopback only (Ray
# otherwise binds the machine's interface address), no usage statistics.
LOCAL_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def import_ray():
    """The `ray` module, or InputError naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise InputError(f"--ray needs Ray, which is not installed: pip install '{RAY_EXTRA}'") from None
    return ray


# ---------------------------------------------------------------------------------------------
# Addresses
# ---------------------------------------------------------------------------------------------
def parse_address(address: str) -> tuple[str, int] | None:
    """(host, port) of "host:port" (or "ray://host:port", "[v6]:port"); None for "local"/"auto"."""
    text = str(address).strip()
    if text in KEYWORDS:
        return None
    bare = text.removeprefix("ray://")
    host, sep, port = bare.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(
            f"--ray {text!r}: expected a Ray head's address host:port (e.g. 10.0.0.1:6379), 'auto' or 'local'"
        )
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# The client preface of HTTP/2 followed by an empty SETTINGS frame. Ray's head (GCS) speaks gRPC, so
# it answers with a SETTINGS frame of its own; a closed port, a dashboard (HTTP/1) or a silent host
# does not, and we can say so at once instead of letting Ray wait for minutes.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def check_head(host: str, port: int, timeout: float = CONNECT_TIMEOUT) -> None:
    """InputError unless a gRPC server (a Ray head) answers at host:port within `timeout` seconds."""
    where = f"{host}:{port}"
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(_H2_PREFACE)
            head = b""
            while len(head) < 9:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = sock.recv(9 - len(head))
                if not chunk:
                    break
                head += chunk
    except TimeoutError:
        raise InputError(f"no Ray cluster at {where}: no answer within {timeout:g} s") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise InputError(f"no Ray cluster at {where}: {reason.lower()}") from None
    if len(head) < 9 or head[3] != 0x04:  # frame type 4: SETTINGS
        raise InputError(
            f"{where} is not a Ray cluster's head (it does not speak gRPC); give the head's GCS port "
            "(6379 by default), not the dashboard's"
        )


# ---------------------------------------------------------------------------------------------
# Connecting and the local cluster
# ---------------------------------------------------------------------------------------------
@dataclass
class Connection:
    """How this process is attached to Ray; `close()` undoes exactly what `connect` did."""

    address: str
    started_here: bool  # `local`: this process started the cluster (and stops it)
    connected_here: bool  # False when Ray was already initialised by the caller
    saved_env: dict[str, str | None] = field(default_factory=dict)
    saved_cluster_flag: bool | None = None

    def close(self) -> None:
        ray = import_ray()
        if self.connected_here and ray.is_initialized():
            ray.shutdown()  # for `local`, this also stops the cluster's processes
        for key, value in self.saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if self.saved_env:
            _reload_ray_settings()
        self.saved_env = {}
        if self.saved_cluster_flag is not None:
            _set_cluster_flag(self.saved_cluster_flag)
            self.saved_cluster_flag = None


def _set_cluster_flag(value: bool) -> bool:
    """Set Ray's ENABLE_RAY_CLUSTER in this process; returns the old value.

    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps Ray on loopback, but Ray reads it once, when it is
    imported; a process that imported Ray before (the CLI checks the extra first) would still turn
    127.0.0.1 into the interface address when it connects, so the flag itself is set too."""
    from ray._private import ray_constants

    old = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = value
    return old


def _reload_ray_settings() -> None:
    """Make this process see the RAY_* settings of its environment now (token authentication among
    them): Ray reads them when it is imported, which may have been before they were set."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def connect(
    address: str | None,
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    timeout: float = CONNECT_TIMEOUT,
    exit_after: float | None = None,
) -> Connection:
    """Attach this process to Ray. `address` None: use the connection the caller already made.
    "local": start a cluster on this machine (num_cpus / num_gpus: its size; default: all); it and
    a head on a loopback address keep this process and the cluster on 127.0.0.1.

    exit_after: for the command line: if Ray has neither connected nor failed after this many
    seconds (it retries for minutes where a head answers but cannot be joined), print one line and
    end the process with exit code 2."""
    target = parse_address(address) if address is not None else None
    ray = import_ray()
    if address is None:
        if not ray.is_initialized():
            raise InputError("no Ray connection: give an address, 'auto' or 'local'")
        return Connection("existing", started_here=False, connected_here=False)
    if ray.is_initialized():
        raise InputError("Ray is already initialised in this process; pass address=None to use it")
    conn = Connection(address, started_here=False, connected_here=False)

    def set_env(values: dict[str, str]) -> None:
        for key, value in values.items():
            conn.saved_env.setdefault(key, os.environ.get(key))
            os.environ[key] = value

    kwargs: dict[str, Any] = {"logging_level": "WARNING", "log_to_driver": False}
    if address == "local":
        # Child processes inherit this environment. Token authentication with a token made here, so
        # that nothing is written to ~/.ray and no other local user can submit work to the cluster.
        set_env(LOCAL_ENV)
        if "RAY_AUTH_TOKEN" not in os.environ:
            set_env({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)})
        conn.saved_cluster_flag = _set_cluster_flag(False)
        kwargs.update(
            address="local",
            _node_ip_address="127.0.0.1",
            include_dashboard=False,
            num_cpus=num_cpus,
            num_gpus=num_gpus,
        )
    else:
        if target is not None:
            check_head(*target, timeout=timeout)
            if is_loopback(target[0]):
                # a head on loopback: this driver listens and connects on loopback too
                set_env({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
                conn.saved_cluster_flag = _set_cluster_flag(False)
                kwargs["_node_ip_address"] = "127.0.0.1"
        kwargs["address"] = address
    _reload_ray_settings()
    watchdog = None
    if exit_after is not None:
        watchdog = threading.Timer(exit_after, _give_up, args=(address, exit_after))
        watchdog.daemon = True
        watchdog.start()
    try:
        ray.init(**kwargs)
    except Exception as exc:  # ConnectionError, RuntimeError (version mismatch), AuthenticationError...
        conn.close()
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if address == "local":
            raise InputError(f"cannot start a local Ray cluster: {line}") from None
        raise InputError(f"cannot connect to the Ray cluster at {address}: {line}") from None
    finally:
        if watchdog is not None:
            watchdog.cancel()
    conn.started_here, conn.connected_here = address == "local", True
    return conn


def _give_up(address: str, seconds: float) -> None:
    what = "start a local Ray cluster" if address == "local" else f"connect to the Ray cluster at {address}"
    sys.stderr.write(f"error: could not {what} within {seconds:g} s\n")
    sys.stderr.flush()
    os._exit(2)


# ---------------------------------------------------------------------------------------------
# The worker
# ---------------------------------------------------------------------------------------------
class ShardWorker:
    """A Ray actor (wrapped with `ray.remote` when started): loads the model once, then runs shards.

    A model that cannot be loaded does not kill the actor: `ready()` reports the reason, so the
    driver can say in one line which path failed on which node."""

    def __init__(
        self,
        model_source: str | None,
        shipped_model: Any,
        tokenizer: Any,
        threads: int,
        use_gpu: bool,
        imports: Sequence[str],
    ):
        import importlib
        import platform

        import torch

        torch.set_num_threads(max(1, threads))
        self.node = platform.node()
        self.tokenizer = tokenizer
        self.model = None
        self.error: str | None = None
        try:
            for name in imports:  # modules that register shard functions outside attattr.analyses
                importlib.import_module(name)
            if shipped_model is not None:
                model = shipped_model
            else:
                from .. import models

                model = models.load(model_source, build=False, quiet=True).model
            if use_gpu:
                if not torch.cuda.is_available():
                    raise ModelError(
                        f"GPUs were requested (--gpus-per-worker) but torch {torch.__version__} on this "
                        "node has no CUDA"
                    )
                model.to("cuda")  # Ray made the worker's GPU(s) the only visible ones
            self.model = model.eval()
        except AttattrError as exc:
            self.error = str(exc)
        except Exception as exc:  # an unexpected failure: name it, the driver stops with it
            self.error = f"{type(exc).__name__}: {exc}"

    def ready(self) -> dict[str, Any]:
        import torch

        return {
            "pid": os.getpid(),
            "node": self.node,
            "error": self.error,
            "threads": torch.get_num_threads(),
        }

    def run(self, job: Job, shard: Shard) -> tuple[list[Record], float]:
        """The shard's records and the seconds its computation took (the rest is Ray's overhead)."""
        start = time.perf_counter()
        records = run_shard(job, shard, self.model, self.tokenizer)
        return records, time.perf_counter() - start


@dataclass
class _Actor:
    handle: Any
    ready_ref: Any
    created: float  # when it was started (it must be ready within start_timeout)
    info: dict[str, Any] | None = None  # from ready(): pid, node, error, threads
    task: tuple[str, Shard] | None = None  # (job key, shard) it is computing
    sent: float = 0.0  # when that shard was sent


@dataclass
class RayStats:
    """What happened in the executor's runs (for summaries and the scaling benchmark)."""

    shards: int = 0
    examples: int = 0
    compute_s: float = 0.0  # summed over shards: time inside the shard function on the workers
    round_trip_s: float = 0.0  # summed over shards: from sending a shard to having its records
    retried_shards: int = 0
    worker_deaths: int = 0
    startup_s: float = 0.0  # from starting the workers to the first one ready

    @property
    def overhead_per_shard_s(self) -> float:
        """Scheduling and transfer per shard: round trip minus computation, averaged."""
        return (self.round_trip_s - self.compute_s) / self.shards if self.shards else 0.0


class RayExecutor:
    """The `Executor` of `attattr.analyses.runs` on a Ray cluster (see the module's docstring).

    workers: actors to start (default: the cluster's CPUs, or GPUs, divided by what one takes).
    cpus_per_worker: CPUs per actor; also its torch thread count.
    gpus_per_worker: GPUs per actor (fractions share a GPU); the model runs on cuda when > 0.
    ship_model: send the driver's model through the object store instead of loading `model_source`.
    imports: modules each worker imports first (for shard functions registered outside attattr).
    connect_timeout: seconds an address may take to answer as a Ray head.
    start_timeout: seconds the first worker may take to start and load the model.
    exit_after: see `connect` (the command line's bound on joining a cluster).
    """

    def __init__(
        self,
        address: str | None = "auto",
        *,
        workers: int | None = None,
        cpus_per_worker: int = 1,
        gpus_per_worker: float = 0.0,
        ship_model: bool = False,
        imports: Sequence[str] = (),
        connect_timeout: float = CONNECT_TIMEOUT,
        start_timeout: float = START_TIMEOUT,
        exit_after: float | None = None,
    ):
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise InputError(f"--workers must be an integer >= 1, got {workers!r}")
        if isinstance(cpus_per_worker, bool) or not isinstance(cpus_per_worker, int) or cpus_per_worker < 1:
            raise InputError(f"--cpus-per-worker must be an integer >= 1, got {cpus_per_worker!r}")
        if not isinstance(gpus_per_worker, int | float) or gpus_per_worker < 0:
            raise InputError(f"--gpus-per-worker must be >= 0, got {gpus_per_worker!r}")
        if address is not None:
            parse_address(address)  # a malformed address fails before anything starts
        self.address = address
        self.workers = workers
        self.cpus_per_worker = cpus_per_worker
        self.gpus_per_worker = float(gpus_per_worker)
        self.ship_model = ship_model
        self.imports = tuple(imports)
        self.connect_timeout = connect_timeout
        self.start_timeout = start_timeout
        self.exit_after = exit_after
        self.stats = RayStats()
        self._connection: Connection | None = None
        self._remote = None  # the ShardWorker actor class with this executor's resources
        self._actors: list[_Actor] = []
        self._waiting: dict[Any, _Actor] = {}  # object ref -> its actor: ready() and run() calls
        self._pool_key: tuple | None = None
        self._attempts: dict[tuple[str, int], int] = {}  # (job key, shard index) -> worker deaths
        self._started_actors = 0
        self._max_actors = 0
        self._model_ref = self._tokenizer_ref = self._source = None
        self._pool_started = 0.0

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> RayExecutor:
        """Connect (or start the local cluster). `execute` calls it when needed."""
        if self._connection is None:
            num_cpus = None
            if self.address == "local" and self.workers is not None:
                num_cpus = self.workers * self.cpus_per_worker
            num_gpus = None
            if self.address == "local" and self.workers is not None and self.gpus_per_worker:
                num_gpus = int(-(-self.workers * self.gpus_per_worker // 1))
            self._connection = connect(
                self.address,
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                timeout=self.connect_timeout,
                exit_after=self.exit_after,
            )
        return self

    def close(self) -> None:
        """Stop the workers; disconnect (and stop a local cluster) if this executor connected."""
        if self._actors:
            self._stop_workers()
        self._remote = self._model_ref = self._tokenizer_ref = None
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def __enter__(self) -> RayExecutor:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def describe(self) -> str:
        where = "a local Ray cluster" if self.address == "local" else f"Ray at {self.address}"
        n = self.workers if self.workers is not None else "auto"
        gpus = f", {self.gpus_per_worker:g} GPU" if self.gpus_per_worker else ""
        return f"{where}, {n} workers × {self.cpus_per_worker} CPU{gpus}"

    def worker_info(self) -> list[dict[str, Any]]:
        """pid, node and current shard index of each live worker (tests kill one by its pid)."""
        out = []
        for actor in self._actors:
            if actor.info is not None:
                out.append({**actor.info, "shard": actor.task[1].index if actor.task else None})
        return out

    # -- workers -----------------------------------------------------------------------------
    def _worker_count(self, ray, pending: int) -> int:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        most_cpus = max((n["Resources"].get("CPU", 0) for n in nodes), default=0)
        most_gpus = max((n["Resources"].get("GPU", 0) for n in nodes), default=0)
        if self.cpus_per_worker > most_cpus:
            raise InputError(
                f"--cpus-per-worker {self.cpus_per_worker}: no node of the cluster has that many CPUs "
                f"(largest: {most_cpus:g})"
            )
        if self.gpus_per_worker > most_gpus:
            raise InputError(
                f"--gpus-per-worker {self.gpus_per_worker:g}: no node of the cluster has that many GPUs "
                f"(largest: {most_gpus:g})"
            )
        count = self.workers
        if count is None:
            total = ray.cluster_resources()
            count = int(total.get("CPU", 1) // self.cpus_per_worker)
            if self.gpus_per_worker:
                count = min(count, int(total.get("GPU", 0) // self.gpus_per_worker))
        return max(1, min(count, pending))

    def _start_actor(self, ray) -> _Actor:
        if self._remote is None:
            self._remote = ray.remote(ShardWorker).options(
                num_cpus=self.cpus_per_worker,
                num_gpus=self.gpus_per_worker,
                max_restarts=0,  # a dead worker is replaced by the executor, which knows its shard
                max_concurrency=1,
            )
        handle = self._remote.remote(
            self._source,
            self._model_ref,
            self._tokenizer_ref,
            self.cpus_per_worker,
            self.gpus_per_worker > 0,
            self.imports,
        )
        self._started_actors += 1
        actor = _Actor(handle, handle.ready.remote(), created=time.monotonic())
        self._actors.append(actor)
        self._waiting[actor.ready_ref] = actor
        return actor

    def _stop_workers(self) -> None:
        ray = import_ray()
        for actor in self._actors:
            try:
                ray.kill(actor.handle)
            except Exception:
                pass  # already gone
        self._actors, self._waiting, self._pool_key = [], {}, None

    def _ensure_pool(self, ray, model, tokenizer, model_source: str | None, pending: int) -> None:
        source = None if self.ship_model else _worker_source(model_source)
        if not self.ship_model and source is None:
            raise InputError("the Ray workers need the model's recipe name or directory (or --ship-model)")
        if self.ship_model and model is None:
            raise InputError("--ship-model needs the model loaded on the driver")
        key = (source, id(model) if self.ship_model else None, id(tokenizer))
        if self._pool_key == key and self._actors:
            return
        self._stop_workers()
        count = self._worker_count(ray, pending)
        # Sent once: every worker reads the same objects from the object store.
        self._model_ref = ray.put(_on_cpu(model)) if self.ship_model else None
        self._tokenizer_ref = ray.put(tokenizer)
        self._source = source
        self._started_actors = 0
        self._max_actors = count + max(2, count)  # replacements allowed before giving up
        self._pool_started = time.monotonic()
        for _ in range(count):
            self._start_actor(ray)
        self._pool_key = key

    def _on_ready(self, actor: _Actor, info: dict[str, Any]) -> None:
        if info.get("error"):
            self._stop_workers()
            what = "the shipped model" if self.ship_model else repr(self._source)
            hint = (
                ""
                if self.ship_model or (self.gpus_per_worker and "--gpus-per-worker" in info["error"])
                else "; make it readable at the same path on every node, or pass --ship-model to send "
                "the weights through Ray's object store"
            )
            raise ModelError(f"a Ray worker on {info.get('node')} cannot load {what}: {info['error']}{hint}")
        actor.info = info
        if not self.stats.startup_s:
            self.stats.startup_s = time.monotonic() - self._pool_started

    def _lost(self, ray, actor: _Actor, reason: str) -> tuple[str, Shard] | None:
        """Forget a dead worker, start a replacement (within bounds); its task, to be sent again."""
        try:
            ray.kill(actor.handle)  # "unavailable" is not always dead: make sure it holds nothing
        except Exception:
            pass
        self._actors.remove(actor)
        self.stats.worker_deaths += 1
        self._last_death = reason
        if self._started_actors < self._max_actors:
            self._start_actor(ray)
        if not self._actors:
            self._stop_workers()
            raise RuntimeError(f"every Ray worker died (last: {reason}); see the cluster's logs")
        task, actor.task = actor.task, None
        return task

    # -- execute -----------------------------------------------------------------------------
    def execute(
        self,
        job: Job,
        shards: Sequence[Shard],
        *,
        model: PreTrainedModel | None,
        tokenizer: PreTrainedTokenizerBase,
        model_source: str | None = None,
    ) -> Iterator[tuple[Shard, list[Record]]]:
        """Yield (shard, records) as the workers finish them (any order, each shard once)."""
        self.start()
        ray = import_ray()
        from ray import exceptions as rex

        if not shards:
            return
        self._ensure_pool(ray, model, tokenizer, model_source, len(shards))
        job_key = job.key()
        # Shards still running from an earlier call (the runner calls again after a failed shard
        # when it goes on) are awaited, not sent twice.
        running = {a.task[1].index for a in self._actors if a.task is not None and a.task[0] == job_key}
        queue = deque(s for s in shards if s.index not in running)
        wanted = {s.index for s in shards}

        def dispatch() -> None:
            for actor in self._actors:
                if not queue:
                    return
                if actor.info is not None and actor.task is None:
                    shard = queue.popleft()
                    actor.task, actor.sent = (job_key, shard), time.monotonic()
                    self._waiting[actor.handle.run.remote(job, shard)] = actor

        dispatch()
        while queue or any(a.task is not None and a.task[0] == job_key for a in self._actors):
            starting = [a.created for a in self._actors if a.info is None]
            timeout = None
            if starting and not any(a.info is not None for a in self._actors):
                timeout = max(0.0, min(starting) + self.start_timeout - time.monotonic())
            done, _ = ray.wait(list(self._waiting), num_returns=1, timeout=timeout)
            if not done:
                self._stop_workers()
                raise InputError(
                    f"no Ray worker started within {self.start_timeout:g} s (not enough free CPUs/GPUs "
                    "on the cluster, or loading the model takes longer)"
                )
            actor = self._waiting.pop(done[0])
            try:
                value = ray.get(done[0])
            except (rex.RayActorError, rex.WorkerCrashedError, rex.NodeDiedError, rex.ObjectLostError) as exc:
                task = self._lost(ray, actor, type(exc).__name__)
                if task is not None and task[0] == job_key and task[1].index in wanted:
                    shard = task[1]
                    attempts = self._attempts.get((job_key, shard.index), 0) + 1
                    self._attempts[(job_key, shard.index)] = attempts
                    if attempts >= MAX_SHARD_ATTEMPTS:
                        raise ShardError(
                            shard, RuntimeError(f"its Ray worker died {attempts} times (last: {exc!r})")
                        ) from None
                    self.stats.retried_shards += 1
                    queue.appendleft(shard)  # first in line for the next free worker
                dispatch()
                continue
            except rex.RayTaskError as exc:
                (key, shard), actor.task = actor.task, None
                dispatch()
                if key != job_key or shard.index not in wanted:
                    continue  # a shard of an earlier call that nobody waits for any more
                cause = exc.cause if isinstance(exc.cause, BaseException) else exc
                raise ShardError(shard, cause) from None
            if actor.info is None:  # the answer of ready()
                self._on_ready(actor, value)
                dispatch()
                continue
            records, compute_s = value
            round_trip = time.monotonic() - actor.sent
            (key, shard), actor.task = actor.task, None
            dispatch()
            if key != job_key or shard.index not in wanted:
                continue
            self.stats.shards += 1
            self.stats.examples += len(shard.examples)
            self.stats.compute_s += compute_s
            self.stats.round_trip_s += round_trip
            yield shard, records


def _on_cpu(model):
    """The model to ship: itself on the CPU, or a CPU copy (the driver keeps its device)."""
    import copy

    params = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    if params is None or params.device.type == "cpu":
        return model
    return copy.deepcopy(model).cpu()


def _worker_source(model_source: str | None) -> str | None:
    """What a worker passes to `models.load`: a recipe name as is, a directory as an absolute path
    (workers do not share the driver's working directory)."""
    if model_source is None:
        return None
    path = Path(model_source).expanduser()
    if path.exists():
        return str(path.resolve())
    return str(model_source)
