"""One training job: one mode at one G, from Ray start-up to trials.csv and summary.json.

Every file of the run folder is written through its contract, :mod:`distmis.run_folder`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from distmis import backends
from distmis.cluster.ray_cluster import ClusterError
from distmis.cluster.resources import job_shape
from distmis.errors import CacheSpaceError, ContractError, DeviceError, DistmisError
from distmis.run_folder import (
    RUN_STATE_FILE,
    SEARCH_FILE,
    SUMMARY_FILE,
    TRIALS_FILE,
    RequestedResources,
    Resources,
    RunSearch,
    RunState,
    RunSummary,
)
from distmis.search import Proposal, Search, SearchSettings
from distmis.shards import node_cache
from distmis.shards.info import DatasetInfo
from distmis.train.preflight import require_gpus
from distmis.train.runtime import scheduler_allocation, start_ray, stop_ray
from distmis.train.settings import TrainSettings
from distmis.train.summary import build_summary, save_best_model, write_summary
from distmis.train.trials import devices_seen, worker_devices, write_trials

log = logging.getLogger(__name__)


def _fingerprint(settings: TrainSettings, info: DatasetInfo) -> str:
    """Identity of a run: settings and the exact shards; a change means a fresh start."""
    where = ("ray_address", "cache_scope")  # where it runs, not what it computes
    payload = {k: v for k, v in settings.to_json().items() if k not in where}
    payload["shards"] = {s: [x.sha256 for x in shards] for s, shards in info.splits.items()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _prepare_state(settings: TrainSettings, fingerprint: str) -> bool:
    """Decide between resuming an interrupted run and starting fresh; returns ``resumed``.

    A run that finished (state ``complete``) or had other settings or data is cleared, so
    ``--forcerun`` retrains; one that was interrupted keeps its finished trials.
    """
    state_path = settings.out_dir / RUN_STATE_FILE
    state = None
    if state_path.is_file():
        try:
            state = RunState.read(state_path)
        except ContractError as exc:
            # Never resume from a state this version cannot read: its trials' files would be
            # of an older format too. Starting afresh is the one safe reading of it.
            log.warning("starting afresh: %s", exc)
    if state is not None and not state.complete and state.fingerprint == fingerprint:
        log.info("resuming the interrupted run in %s", settings.out_dir)
        return True
    for stale in ("trials", "ray", "local", "tensorboard"):
        shutil.rmtree(settings.out_dir / stale, ignore_errors=True)
    # Another run's proposals would be replayed into this one's search (and refused).
    (settings.out_dir / SEARCH_FILE).unlink(missing_ok=True)
    RunState(fingerprint=fingerprint, complete=False, started=time.time()).write(state_path)
    return False


def _raise_exit(signum: int, frame) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def node_cache_scope(settings: TrainSettings) -> Iterator[str]:
    """The folder this run's workers cache splits in (:mod:`distmis.shards.node_cache`).

    Under ``distmis ray-cluster`` (SLURM) the launcher names the scope and each node's
    wrapper owns and removes it. Otherwise this process owns it and removes it on the way
    out, SIGTERM included (Snakemake stops a local job with it); after a SIGKILL the next
    run's sweep removes it.
    """
    root = node_cache.cache_root(settings.cache_dir)
    launcher_scope = os.environ.get(node_cache.SCOPE_ENV)
    if launcher_scope:
        yield str(node_cache.scopes_dir(root) / launcher_scope)
        return
    scope = node_cache.CacheScope.create(root, f"run-{socket.gethostname()}-{os.getpid()}")
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_exit)
    try:
        yield str(scope.path)
    finally:
        scope.remove()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _start_ray_for(settings: TrainSettings) -> dict[str, float]:
    """Start (or join) Ray with the run's share; an error if it cannot place every worker."""
    workers = settings.gpus
    resources = start_ray(
        settings.ray_address,
        backends.get(settings.backend).worker_env,
        num_cpus=workers * settings.cpus_per_worker,
        num_gpus=workers if settings.use_gpu else 0,
    )
    needed_cpus = workers * settings.cpus_per_worker
    needed_gpus = workers if settings.use_gpu else 0
    if resources.get("CPU", 0) < needed_cpus or resources.get("GPU", 0) < needed_gpus:
        stop_ray()
        # Ray would otherwise wait forever for workers it can never place.
        raise ClusterError(
            f"the Ray cluster has {resources.get('CPU', 0):g} CPUs and {resources.get('GPU', 0):g} GPUs;"
            f" {workers} workers need {needed_cpus} CPUs and {needed_gpus} GPUs"
        )
    return resources


def _run_with_ray(settings: TrainSettings, configurations, on_record):
    """The configurations through the mode's runner (``Mode.runner``, :mod:`distmis.modes`)."""
    module, function = settings.mode_spec.runner.split(":")
    return getattr(importlib.import_module(module), function)(settings, configurations, on_record)


def _configurations(settings: TrainSettings) -> list[Proposal] | Search | SearchSettings:
    """What the runner trains: the grid's or random search's whole list, drawn now (random
    search's recorded in, or on a resume replayed from, ``search.jsonl``); for TPE the search
    itself, which the local runner asks one configuration at a time, or under Ray Tune the
    search settings alone: Tune's searcher proposes, and its saved state, not the record,
    resumes it (:mod:`distmis.train.tune_search`)."""
    if settings.tune_proposes:
        return settings.search
    if settings.search.algorithm == "tpe":
        return settings.search_record(settings.out_dir)
    return settings.configurations(settings.out_dir)


def run_training(settings: TrainSettings) -> dict:
    """Run the whole grid in ``settings.mode`` on ``settings.gpus`` GPUs (or CPU workers).

    Writes ``trials.csv`` as configurations finish (experiment, hybrid and local runs; data
    mode's one Ray Train run when it ends, each ``result.json`` as it finishes) and, at the end,
    ``summary.json``, the best model (``best_model.keras`` or ``best_model.pt``) and its card
    ``best_model.json``; returns the summary as written (its JSON object).
    """
    if settings.use_gpu:
        # Before Ray, the data or any trial: a framework that cannot use the GPUs would
        # train on the CPU and file the timings as GPU ones.
        require_gpus(
            settings.backend,
            gpus_on_this_node(settings),
            check_nccl=settings.workers_per_trial > 1,
        )
    # Before any trial imports the framework: e.g. a use_gpu: false run keeps TensorFlow, here
    # and in its Ray workers, off CUDA (no "failed call to cuInit" error line in a green run).
    run_devices = backends.get(settings.backend).run_devices(settings.use_gpu)
    with run_devices, node_cache_scope(settings) as scope:
        return _run_training(replace(settings, cache_scope=scope))


def gpus_on_this_node(settings: TrainSettings) -> int:
    """The GPUs this job's first node must show: the local runner trains on one; a Ray run's
    G spread over ceil(G / gpus_per_node) nodes (:func:`job_shape`)."""
    if settings.runner == "local":
        return 1
    return job_shape(
        settings.gpus, settings.gpus_per_node, settings.cpus_per_worker, use_gpu=True
    ).gpus_per_node


# Trial errors that blame the node, not the configuration: every trial there fails the same
# way, so the run fails with the first one's reason instead of ending green with failed trials.
NODE_ERRORS = (DeviceError, CacheSpaceError)


def refuse_node_failures(records) -> None:
    """An error when a trial failed for its node's sake (no usable GPU, no room for the node
    cache). The run's files stay for a look, and the run counts as complete, so the rerun
    after the fix starts afresh instead of keeping these failed trials."""
    for error_type in NODE_ERRORS:
        refused = [r for r in records if error_type.__name__ in (r.error or "")]
        if refused:
            raise DistmisError(f"{refused[0].trial_id}: {refused[0].error}")


def refuse_cpu_fallback(settings: TrainSettings, records, summary: RunSummary) -> None:
    """An error when a ``use_gpu`` run's workers trained on something else than a GPU (the
    run counts as complete, as in :func:`refuse_node_failures`)."""
    if not settings.use_gpu:
        return
    elsewhere = [d for d in summary.worker_devices if d.device_type != "gpu"]
    if elsewhere:
        where = ", ".join(f"{d.host} ({d.device_type}: {d.device_name})" for d in elsewhere)
        raise DistmisError(
            f"use_gpu is true but workers trained off the GPU on {where}; see "
            f"{settings.out_dir}/trials/*/workers/"
        )


def _run_training(settings: TrainSettings) -> dict:
    info = DatasetInfo.from_dir(settings.tfrecord_dir)
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    if settings.cache:
        # This node's room for the splits, before Ray or any trial starts.
        node_cache.check_room_for_run(info, Path(settings.cache_scope))
    resumed = _prepare_state(settings, _fingerprint(settings, info))
    configurations = _configurations(settings)  # after _prepare_state: it clears search.jsonl
    finished = []

    def on_record(record) -> None:
        finished.append(record)
        write_trials(settings.out_dir / TRIALS_FILE, finished)

    if settings.runner == "local":
        from distmis.train.local import run_local

        # This process is the whole run: no cluster to start (its cores are recorded below).
        resources = None
        makespan_start = time.time()
        records = run_local(settings, configurations, on_record)
        makespan_end = time.time()
    else:
        resources = _start_ray_for(settings)
        try:
            makespan_start = time.time()
            records = _run_with_ray(settings, configurations, on_record)
            makespan_end = time.time()
        finally:
            stop_ray()
    workers = settings.gpus
    if resumed:
        # The honest span of a resumed run covers every trial, earlier ones included.
        makespan_start = min([makespan_start, *(r.start_time for r in records)])
    write_trials(settings.out_dir / TRIALS_FILE, records)
    save_best_model(settings, records)
    summary = build_summary(
        backend=settings.backend,
        mode=settings.mode,
        gpus=settings.gpus,
        runner=settings.runner,
        gpus_per_trial=settings.workers_per_trial,
        scheduler=settings.scheduler,
        search=RunSearch(settings.search.algorithm, settings.search.samples, settings.search.seed),
        trials=records,
        makespan_start=makespan_start,
        makespan_end=makespan_end,
        resources=Resources(
            requested=RequestedResources(
                cpus=workers * settings.cpus_per_worker,
                gpus=workers if settings.use_gpu else 0,
                cpus_per_worker=settings.cpus_per_worker,
                use_gpu=settings.use_gpu,
            ),
            # The Ray cluster's total resources (None for the local runner).
            ray_cluster=resources,
            # Cores this job's process may run on (its cgroup/affinity share, e.g. SLURM's).
            cpus_visible_to_job=len(os.sched_getaffinity(0)),
            slurm=scheduler_allocation(),
        ),
        settings=settings.to_json(),
        devices_seen=devices_seen(settings, records),
        resumed=resumed,
        # What the planner scales a step to an epoch with (it reads them from summary.json).
        train_volumes=info.count("train"),
        val_volumes=info.count("val"),
        worker_devices=worker_devices(settings, records),
    )
    write_summary(settings.out_dir / SUMMARY_FILE, summary)
    state_path = settings.out_dir / RUN_STATE_FILE
    replace(RunState.read(state_path), complete=True).write(state_path)
    refuse_node_failures(records)
    refuse_cpu_fallback(settings, records, summary)
    return summary.to_json()
