"""The Ray options every dataset command takes, and the executor they describe.

    def some_cmd(..., ray: RayOpt = None, workers: WorkersOpt = None,
                 cpus_per_worker: CpusPerWorkerOpt = 1, gpus_per_worker: GpusPerWorkerOpt = 0.0,
                 ship_model: ShipModelOpt = False):
        check_ray_options(ray, workers, cpus_per_worker, gpus_per_worker, ship_model)  # before loading
        ...
        with executor_from_options(ray, workers, cpus_per_worker, gpus_per_worker, ship_model) as executor:
            result = analysis(..., executor=executor, model_source=model)   # executor None: in process

`--ray ADDRESS` takes a value (typer has no option with an optional value): a head's host:port,
`auto` (the cluster this machine belongs to, or RAY_ADDRESS) or `local` (start one here).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated

import typer

from ..core.errors import InputError

if TYPE_CHECKING:
    from ..analyses.executors import RayExecutor

PANEL = "Ray cluster"
# The command gives up (one line, exit 2) when Ray has neither joined the cluster nor failed by then.
JOIN_TIMEOUT = {"local": 180.0, "address": 60.0}

RayOpt = Annotated[
    str | None,
    typer.Option(
        "--ray",
        metavar="ADDRESS",
        help=(
            "Run the examples on a Ray cluster: its head's host:port, 'auto' (the cluster this machine "
            "belongs to) or 'local' (start one on this machine). Needs attattr\\[ray]. An address that "
            "does not answer as a Ray head fails within 15 s; joining gives up after 60 s."
        ),
        rich_help_panel=PANEL,
    ),
]
WorkersOpt = Annotated[
    int | None,
    typer.Option(
        "--workers",
        help="Ray workers, each loading the model once (default: the cluster's CPUs / --cpus-per-worker).",
        rich_help_panel=PANEL,
    ),
]
CpusPerWorkerOpt = Annotated[
    int,
    typer.Option("--cpus-per-worker", help="CPUs (and torch threads) per Ray worker.", rich_help_panel=PANEL),
]
GpusPerWorkerOpt = Annotated[
    float,
    typer.Option(
        "--gpus-per-worker", help="GPUs per Ray worker (0.5: two workers share one).", rich_help_panel=PANEL
    ),
]
ShipModelOpt = Annotated[
    bool,
    typer.Option(
        "--ship-model",
        help=(
            "Send the model's weights to the Ray workers once through the object store, instead of each "
            "loading it from the recipe name or path (for nodes that cannot read the path)."
        ),
        rich_help_panel=PANEL,
    ),
]


def check_ray_options(
    ray: str | None, workers: int | None, cpus_per_worker: int, gpus_per_worker: float, ship_model: bool
) -> None:
    """Option errors before anything is loaded: Ray options without --ray, bad counts, a bad address,
    Ray not installed."""
    if ray is None:
        given = [
            name
            for name, used in (
                ("--workers", workers is not None),
                ("--cpus-per-worker", cpus_per_worker != 1),
                ("--gpus-per-worker", gpus_per_worker != 0),
                ("--ship-model", ship_model),
            )
            if used
        ]
        if given:
            raise InputError(f"{', '.join(given)} only apply with --ray ADDRESS (or --ray local)")
        return
    from ..analyses.executors import RayExecutor, import_ray

    RayExecutor(
        ray, workers=workers, cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker
    )  # checks the values and the address's form
    import_ray()


@contextlib.contextmanager
def executor_from_options(
    ray: str | None,
    workers: int | None,
    cpus_per_worker: int = 1,
    gpus_per_worker: float = 0.0,
    ship_model: bool = False,
) -> Iterator[RayExecutor | None]:
    """The Ray executor the options describe, connected (a local cluster started) on entry and
    closed on exit, also on errors and Ctrl-C; None without --ray (the runner then works in process)."""
    check_ray_options(ray, workers, cpus_per_worker, gpus_per_worker, ship_model)
    if ray is None:
        yield None
        return
    from ..analyses.executors import RayExecutor

    executor = RayExecutor(
        ray,
        workers=workers,
        cpus_per_worker=cpus_per_worker,
        gpus_per_worker=gpus_per_worker,
        ship_model=ship_model,
        exit_after=JOIN_TIMEOUT["local" if ray == "local" else "address"],
    )
    with executor:
        yield executor
