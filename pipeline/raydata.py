"""The only place that knows Ray: cluster connection and mapping stages onto Ray Data.

Stages are plain classes (`__init__(config)`, optional `setup()`, `__call__(batch)`) that
declare how they run (`execution`, stages/execution.py); here a list of them becomes a chain of
`map_batches` operators, as tasks (cheap, stateless stages) or actor pools (stages that load a
model once per worker), and Ray's errors become StageFailure. pass 1 and pass 2 call `stream`
and know nothing else of Ray.

Retries are bounded by ray.max_retries: a task whose worker dies, or an actor that dies
mid-batch, is retried (a dead actor is restarted and its batch resubmitted) at most that many
times, where Ray Data's defaults retry forever. An exception a stage raises is not retried: it
would raise again (stages record bad sources themselves).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import os
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import ray
import ray.data  # sets up its loggers when imported: before connect routes them

from . import ray_logs
from .config import RayConfig
from .resume import RunError

log = logging.getLogger("optidel")


def connect(config: RayConfig, logs: str | None = None) -> None:
    """Join the cluster at config.address / RAY_ADDRESS, else start a local Ray (the embedded
    default) whose workers run at the priority of any other process. Reuses a Ray already
    initialised in this process (tests, notebooks), unless config.address names another
    cluster: then the job would silently run in the wrong place.
    Connecting itself, it sends Ray's log lines to the directory `logs` (pipeline/ray_logs.py)
    and the console only those that optidel's log level asks for."""
    _freed_arrays_to_the_os()
    if ray.is_initialized():
        current = ray.get_runtime_context().gcs_address
        if config.address and config.address not in ("auto", current):
            raise RunError(
                f"ray.address={config.address}, but this process is already connected to the Ray "
                f"cluster at {current}; call ray.shutdown() first, or leave ray.address unset"
            )
        return
    address = config.address or os.environ.get("RAY_ADDRESS")
    level = log.getEffectiveLevel()
    ray_logs.route(level, logs)  # before ray.init, so that its own lines go there too
    ray.init(
        address=address,
        include_dashboard=False,
        logging_level=min(level, logging.INFO),
        log_to_driver=True,
        # A local Ray is the user's own machine, shared with whatever else runs there. Ray starts
        # its workers at niceness 15, so that on a busy machine every other process comes first:
        # the demo beside two busy loops got under 5% of the cores and ran 20x slower, not 2x.
        # A cluster's own setting (address given) is the operator's to choose, and Ray refuses
        # a system config when joining one.
        _system_config=None if address else {"worker_niceness": 0},
    )
    if level > logging.DEBUG:
        # Ray Data's bars count rows (a source's patch rows too); pass 1 and 2 log their
        # progress in sources, patches and samples instead (pipeline/progress.py). Ray Data
        # then warns once that its bars are off: about a choice made here, so not shown.
        ray.data.DataContext.get_current().enable_progress_bars = False
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    log.info("ray: %s", "cluster at " + address if address else "local")


@dataclass(frozen=True)
class Step:
    """One stage of a plan: the class, its constructor's keyword arguments and, where the batch
    depends on settings outside the stage's own section, a batch size that overrides the one
    the stage declares."""

    stage: type
    kwargs: dict
    batch_size: int | None = None


class StageFailure(Exception):
    """Ray gave up on a plan (a worker or actor died past its retries, or a stage raised); the
    message is the first line of the cause."""


def stream(rows: list[dict], steps: list[Step], config: RayConfig, *, rows_per_block: int, in_order: bool = False) -> Iterator[dict[str, np.ndarray]]:
    """Run `rows` through the steps on Ray Data and yield the result batches (numpy), in input
    order when `in_order`. Rows go in blocks of `rows_per_block`. Each stage runs as its
    `execution` declares (stages/execution.py); tasks share the CPUs the plan's actor pools
    leave."""
    context = ray.data.DataContext.get_current()
    keep_order = context.execution_options.preserve_order
    context.execution_options.preserve_order = keep_order or in_order
    try:
        ds = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / rows_per_block)))
        yield from _through(ds, steps, config)
    finally:
        context.execution_options.preserve_order = keep_order


def stream_batches(batches: list[dict[str, np.ndarray]], steps: list[Step], config: RayConfig) -> Iterator[dict[str, np.ndarray]]:
    """As `stream`, for rows that are already batches of columns (a block each), in any order."""
    from ray.data.block import BlockAccessor

    yield from _through(ray.data.from_blocks([BlockAccessor.batch_to_block(b) for b in batches]), steps, config)


def _through(ds: ray.data.Dataset, steps: list[Step], config: RayConfig) -> Iterator[dict[str, np.ndarray]]:
    actor_pools = sum(step.stage.execution.actor for step in steps)
    try:
        for step in steps:
            ds = _map(ds, step, config, actor_pools)
        yield from ds.iter_batches(batch_size=None, batch_format="numpy")
    except ray.exceptions.RayError as exc:
        raise StageFailure(_cause(exc)) from exc


def _cause(exc: BaseException) -> str:
    """The first line of Ray's error (its full text repeats the remote traceback)."""
    inner = exc.__cause__ if isinstance(exc, ray.exceptions.UserCodeException) and exc.__cause__ else exc
    first = str(inner).strip().splitlines()[0] if str(inner).strip() else ""
    return f"{type(inner).__name__}: {first.rstrip('.')}"


def _map(ds: ray.data.Dataset, step: Step, config: RayConfig, actor_pools: int) -> ray.data.Dataset:
    execution = step.stage.execution
    batch_size = step.batch_size or execution.batch_size or config.model_batch_size
    if execution.actor:
        return _map_actors(ds, step.stage, step.kwargs, batch_size=batch_size, config=config)
    return _map_task(ds, step.stage, step.kwargs, batch_size=batch_size, config=config, actor_stages=actor_pools)


def _map_task(ds: ray.data.Dataset, stage_cls, kwargs: dict, *, batch_size: int, config: RayConfig, actor_stages: int):
    """Run a stateless stage as Ray tasks, beside `actor_stages` actor pools of the same plan."""

    def apply(batch):
        return stage_cls(**kwargs)(batch)

    apply.__name__ = stage_cls.__name__
    with _retry_args_allowed():
        return ds.map_batches(
            apply,
            batch_size=batch_size,
            batch_format="numpy",
            num_cpus=task_cpus(config, actor_stages),
            max_retries=config.max_retries,
        )


def task_cpus(config: RayConfig, actor_stages: int) -> float:
    """CPUs per task: ray.cpus_per_task, or by default one task per cluster CPU, the tasks
    sharing what the actor pools leave (C CPUs, R reserved: tasks of (C - R) / C). Whole CPUs
    per task would idle the CPU beside a fractional actor (on 2 cores: 1 task + 1 actor on 1.5
    CPUs), and more tasks than CPUs slow the actors' start-up, which loads torch, to a crawl.
    A setting that leaves no room for a task would hang Ray Data: refused here, with the cause.
    A cluster with no CPUs yet (an autoscaler adds the nodes) gets ray.cpus_per_task, or 1."""
    total = ray.cluster_resources().get("CPU", 0.0)
    if total == 0:
        return config.cpus_per_task or 1.0
    reserved = actor_stages * config.actors * config.cpus_per_actor
    room = total - reserved
    wanted = config.cpus_per_task
    if wanted is None:
        wanted = math.floor(room / total * 1e4) / 1e4  # Ray counts CPUs to 1e-4
    if wanted <= 0 or wanted > room + 1e-9:
        raise RunError(
            f"the Ray cluster has {total:g} CPUs; {actor_stages} actor pool(s) of ray.actors={config.actors} x "
            f"ray.cpus_per_actor={config.cpus_per_actor:g} leave {room:g}, too few for tasks of "
            f"{wanted:g} CPUs: lower ray.actors, ray.cpus_per_actor or ray.cpus_per_task"
        )
    return wanted


def _map_actors(ds: ray.data.Dataset, stage_cls, kwargs: dict, *, batch_size: int, config: RayConfig):
    """Run a model stage on an actor pool: the model loads once per actor, on a GPU when
    gpus_per_actor > 0."""
    extra = {"num_gpus": config.gpus_per_actor} if config.gpus_per_actor else {}
    with _retry_args_allowed():
        return ds.map_batches(
            stage_cls,
            fn_constructor_kwargs=kwargs,
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=config.actors),
            num_cpus=config.cpus_per_actor,
            max_restarts=config.max_retries,
            max_task_retries=config.max_retries,
            **extra,
        )


@contextlib.contextmanager
def _retry_args_allowed():
    """Ray 2.60 warns that extra remote args (our retry bounds) go away in Ray 2.64, yet has
    no named parameter for them; silenced here only, so other deprecations still show."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated", category=DeprecationWarning)
        yield


def device(config: RayConfig) -> str:
    return "cuda" if config.gpus_per_actor > 0 else "cpu"


# glibc's mallopt parameter: the size from which a block gets a mapping of its own.
_M_MMAP_THRESHOLD = -3


def _freed_arrays_to_the_os() -> None:
    """In the driver: have glibc's malloc give every block of 128 KiB or more a mapping of its
    own, unmapped when freed. By default glibc raises that threshold to the largest block freed
    so far (up to 32 MiB); from then on the driver's arrays the size of the budget come from the
    heap, and their freed pages stay in its RSS. With the threshold fixed, the driver's peak at
    1M candidates fell from 401 to 369 MiB (benchmarks/scale.py). Not glibc: nothing to do."""
    mallopt = _glibc("mallopt")
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, 128 * 1024)


def freed_heap_to_the_os() -> None:
    """In the driver, after a step that freed many small blocks (under the mmap threshold): hand
    the heap's free pages back (glibc's malloc_trim). Freed blocks among live ones stay in its
    RSS otherwise: after the selection at 16M candidate patches (`dedup`), 18 MiB of its heap
    was free, 5 at 1M (benchmarks/scale.py). Not glibc: nothing to do."""
    malloc_trim = _glibc("malloc_trim")
    if malloc_trim is not None:
        malloc_trim(0)


def _glibc(name: str):
    """glibc's function `name`, or None where the C library is not glibc."""
    try:
        return getattr(ctypes.CDLL("libc.so.6"), name)
    except (OSError, AttributeError):
        return None


def run_tasks(fn, calls: list[tuple], config: RayConfig, put: Callable[[object], ray.ObjectRef] = ray.put) -> Iterator:
    """Yield fn(*call) for each call, in call order, each call a Ray task of ray.cpus_per_task
    CPUs (default one): the selection's steps over the pass-1 parts (pipeline/selection/).
    Results wait in the object store until the caller takes them, one
    at a time, so it can fold them without holding them all. `put` stores each argument more
    than one call passes (_shared_once)."""
    remote = ray.remote(**_task_options(config))(fn)
    refs = [remote.remote(*call) for call in _shared_once(calls, put)]
    try:
        for i in range(len(refs)):
            result = ray.get(refs[i])
            refs[i] = None  # the caller has it: the object store may free it
            yield result
    except ray.exceptions.RayError as exc:
        raise StageFailure(_cause(exc)) from exc
    except GeneratorExit:
        # The caller stopped early (and closed this): the tasks still in flight finish first, so
        # that none writes a file after the caller has removed their folder (spool.run_through_files).
        pending = [ref for ref in refs if ref is not None]
        if pending:
            ray.wait(pending, num_returns=len(pending), fetch_local=False)
        raise


ObjectRef = ray.ObjectRef  # what a task's result stays in the object store as, for later tasks


def dump(value, file) -> None:
    """`value` pickled to `file` as ray.put serialises it: by cloudpickle, so that a function
    goes by value where Ray's would (one a test registers)."""
    ray.cloudpickle.dump(value, file, protocol=5)


def result_ref(fn, args: tuple, config: RayConfig) -> ObjectRef:
    """fn(*args) as a Ray task whose result stays in the object store: its reference alone,
    for later tasks to take as an argument."""
    return ray.remote(**_task_options(config))(fn).remote(*args)


def shuffle(map_fn, calls: list[tuple], reduce_fn, buckets: int, config: RayConfig) -> tuple[list, list]:
    """A hash-partitioned step: map_fn(*call) for each call returns (pieces, note), pieces[b]
    for bucket b; then one task per bucket runs reduce_fn(*pieces) on its piece of every map.
    Returns (the notes in call order, the reduce results in bucket order). The pieces go from
    map to reduce through the object store, never through this process, which holds only
    their references (calls x buckets)."""
    maps = _mapped(map_fn, calls, buckets, config)
    reducer = ray.remote(**_task_options(config))(reduce_fn)
    reduced = [reducer.remote(*(refs[b] for refs in maps)) for b in range(buckets)]
    try:
        return ray.get([refs[buckets] for refs in maps]), ray.get(reduced)
    except ray.exceptions.RayError as exc:
        raise StageFailure(_cause(exc)) from exc


def split(map_fn, calls: list[tuple], buckets: int, config: RayConfig) -> tuple[list[list], list]:
    """A shuffle's map half: map_fn(*call) for each call returns (pieces, note), pieces[b] for
    bucket b. Returns the pieces' references, [call][bucket], which later tasks take as their
    arguments (run_tasks resolves them there), and the notes in call order: this process never
    fetches a piece."""
    maps = _mapped(map_fn, calls, buckets, config)
    try:
        notes = ray.get([refs[buckets] for refs in maps])
    except ray.exceptions.RayError as exc:
        raise StageFailure(_cause(exc)) from exc
    return [refs[:buckets] for refs in maps], notes


def _task_options(config: RayConfig) -> dict:
    """A task of the steps over the parts: ray.cpus_per_task CPUs (default one), retried."""
    return {"num_cpus": config.cpus_per_task or 1.0, "max_retries": config.max_retries}


def _mapped(map_fn, calls: list[tuple], buckets: int, config: RayConfig) -> list:
    """A shuffle's map tasks, submitted: per call, the references of its buckets' pieces and,
    last, of its note."""
    mapper = ray.remote(**_task_options(config), num_returns=buckets + 1)(_pieces_then_note)
    return [mapper.remote(map_fn, buckets, *call) for call in _shared_once(calls)]


def _shared_once(calls: list[tuple], put: Callable[[object], ray.ObjectRef] = ray.put) -> list[tuple]:
    """The calls, with each argument that more than one call passes (the same object: a loader,
    a verdict, a plan's rows) put in the object store once, by `put`, and passed as its
    reference, which the task receives resolved. Passed as itself, Ray would serialise and
    store it again for every task: O(tasks x budget) for a verdict the size of the budget."""
    calls = [tuple(call) for call in calls]
    args = {id(arg): arg for call in calls for arg in call if not isinstance(arg, _PASSED_AS_IS)}
    uses = Counter(id(arg) for call in calls for arg in call)
    refs = {key: put(arg) for key, arg in args.items() if uses[key] > 1}
    return [tuple(refs.get(id(arg), arg) for arg in call) for call in calls]


# Small immutable values (and references already) gain nothing from a put of their own.
_PASSED_AS_IS = (ray.ObjectRef, int, float, str, bool, type(None), tuple)


def _pieces_then_note(map_fn, buckets: int, *call) -> tuple:
    """A shuffle's map task: its pieces and note as the task's buckets + 1 separate returns."""
    pieces, note = map_fn(*call)
    if len(pieces) != buckets:
        raise ValueError(f"{map_fn.__name__} gave {len(pieces)} pieces for {buckets} buckets")
    return (*pieces, note)


def call_on_model_resources(fn, config: RayConfig, **kwargs):
    """Run `fn(cpus=C, device=D, **kwargs)` as one Ray task, wait for it and return its result;
    Ray's errors become StageFailure. Used for work the driver would otherwise do itself (the
    proxy's training), so that it runs where the models run, sized by Ray, not beside Ray's
    workers on the driver's cores.

    With ray.gpus_per_actor > 0 the task gets a score actor's resources (that many GPUs and
    ray.cpus_per_actor CPUs), D = "cuda". Otherwise D = "cpu" and it gets all the CPUs of the
    cluster's largest node (the run waits on it, nothing else runs meanwhile), or
    ray.cpus_per_actor while the cluster has no CPUs yet; `fn` sizes its threads by C. Its
    OpenMP threads wait passively (OMP_WAIT_POLICY, read once when the task's fresh worker
    starts): a spinning thread whose sibling lost its core to another process burns the time
    that sibling needs, which made training on busy cores ten times slower, not two."""
    gpus = config.gpus_per_actor
    largest = max((node["Resources"].get("CPU", 0.0) for node in ray.nodes() if node["Alive"]), default=0.0)
    cpus = config.cpus_per_actor if gpus > 0 or largest == 0 else largest
    task = ray.remote(fn).options(
        num_cpus=cpus,
        num_gpus=gpus,
        max_retries=config.max_retries,
        runtime_env={"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}},
    )
    try:
        return ray.get(task.remote(cpus=cpus, device=device(config), **kwargs))
    except ray.exceptions.RayError as exc:
        # The task's own exception arrives wrapped, its first line naming only the task.
        raised = exc.cause if isinstance(exc, ray.exceptions.RayTaskError) and exc.cause else exc
        raise StageFailure(_cause(raised)) from exc
