"""Running an evaluation: over the units of :mod:`oomkit.fleet.sources`, on
this process, on every core (``concurrent.futures.ProcessPoolExecutor``), or
on a Dask cluster (``dask.distributed``).  Each unit gives a small
:class:`~oomkit.fleet.evaluate.Summary`; summaries are merged as units
finish, in any order, to the same result.  Memory: a unit's stream in each
worker, and one summary per unit in flight.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from oomkit.fleet.evaluate import Candidate, Evaluator, Summary
from oomkit.fleet.sources import Unit, records

Progress = Callable[[Unit], None]


def evaluate_unit(unit: Unit, candidates: Sequence[Candidate], base_dir: str | None = None) -> Summary:
    """One unit's summary (what a worker runs)."""
    ev = Evaluator(candidates, base_dir)
    for piece in unit.pieces:
        for item, index in records(piece):
            if isinstance(item, str):
                ev.unreadable(item)
            else:
                ev.add(item, piece.path, index)
    return ev.done()


def run_serial(units: Sequence[Unit], candidates: Sequence[Candidate], base_dir: str | None = None,
               progress: Progress | None = None) -> Summary:
    total = Summary()
    for unit in units:
        total.merge(evaluate_unit(unit, candidates, base_dir))
        if progress:
            progress(unit)
    return total


def run_local(units: Sequence[Unit], candidates: Sequence[Candidate], base_dir: str | None = None,
              workers: int | None = None, progress: Progress | None = None) -> Summary:
    """On this machine's cores: at most twice as many units in flight as workers,
    so a huge input never queues a million futures."""
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(units) <= 1:
        return run_serial(units, candidates, base_dir, progress)
    total = Summary()
    with ProcessPoolExecutor(workers) as pool:
        for unit, summary in _bounded(pool.submit, units, 2 * workers, candidates, base_dir):
            total.merge(summary)
            if progress:
                progress(unit)
    return total


def _bounded(submit: Callable[..., Future], units: Iterable[Unit], window: int,
             *args: Any) -> Iterator[tuple[Unit, Summary]]:
    pending: dict[Future, Unit] = {}
    it = iter(units)
    for unit in it:
        pending[submit(evaluate_unit, unit, *args)] = unit
        if len(pending) >= window:
            break
    while pending:
        done, _ = wait(pending, return_when=FIRST_COMPLETED)
        for fut in done:
            unit = pending.pop(fut)
            yield unit, fut.result()
            nxt = next(it, None)
            if nxt is not None:
                pending[submit(evaluate_unit, nxt, *args)] = nxt


def run_dask(address: str, units: Sequence[Unit], candidates: Sequence[Candidate],
             base_dir: str | None = None, progress: Progress | None = None,
             workers: int | None = None, connect_timeout: float = 10.0) -> Summary:
    """The same job on a Dask cluster: ``address`` of its scheduler, or
    ``local`` for a :class:`distributed.LocalCluster` of this machine's cores.
    The workers need oomkit (and the candidates' policy files) importable."""
    from distributed import Client, LocalCluster, as_completed

    cluster = None
    if address == "local":
        cluster = LocalCluster(n_workers=workers or os.cpu_count() or 1, threads_per_worker=1,
                               processes=True, dashboard_address=":0")
        client = Client(cluster)
    else:
        try:
            client = Client(address, timeout=connect_timeout)
        except (OSError, TimeoutError, ValueError) as exc:
            from oomkit.errors import ConfigError

            raise ConfigError(f"--dask {address}: cannot reach the scheduler: {exc}") from None
    try:
        return gather(client, as_completed, units, candidates, base_dir, progress)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def gather(client: Any, as_completed: Any, units: Sequence[Unit], candidates: Sequence[Candidate],
           base_dir: str | None, progress: Progress | None, window: int | None = None) -> Summary:
    """Units through ``client``, a bounded number in flight, merged as they finish."""
    # Enough in flight that a worker never waits for the client's round trip.
    window = window or max(8, 4 * sum(client.nthreads().values()))
    cands = list(candidates)
    total = Summary()
    it = iter(units)
    first = [u for _, u in zip(range(window), it, strict=False)]
    by_key: dict[str, Unit] = {}
    futures = []
    for u in first:
        f = client.submit(evaluate_unit, u, cands, base_dir, pure=False)
        by_key[f.key] = u
        futures.append(f)
    ac = as_completed(futures)
    for fut in ac:
        unit = by_key.pop(fut.key)
        total.merge(fut.result())
        fut.release()
        if progress:
            progress(unit)
        nxt = next(it, None)
        if nxt is not None:
            f = client.submit(evaluate_unit, nxt, cands, base_dir, pure=False)
            by_key[f.key] = nxt
            ac.add(f)
    return total
