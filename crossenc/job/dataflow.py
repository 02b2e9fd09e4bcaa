"""The Ray Data dataflow of a score pass: read and tokenize row groups → score on the replicas →
(a rerank or mining whose groups span files: shuffle by group) → hand blocks to the writers."""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Any

import ray

from crossenc.config import JobConfig
from crossenc.engine.replica import ScorerReplica
from crossenc.inputs.read import read_tokenized
from crossenc.models.describe import ModelInfo
from crossenc.models.several import ModelSet, build_model_set, lone, tokenize_models
from crossenc.output.writer import WriterOptions, write_block
from crossenc.tasks import task_for

# Ray Data warns when a stage capped at n tasks at a time got fewer than n blocks: the write
# stage's cap (one task per writer) is a bound, not a wish, so a small run needs no warning.
warnings.filterwarnings(
    "ignore", message=r"The maximum number of concurrent tasks for 'MapBatches\(write_block\)'"
)


TOKENIZE_CPUS = 0.5  # a tokenize task's reservation: its own tasks, never fused into the scorers


def scoring_stages(
    ds: ray.data.Dataset,
    cfg: JobConfig,
    info: ModelInfo,
    rank_partitions: int | None = None,
    tokenized: bool = False,
    load_model: bool = True,
    counter: Any = None,
    models: ModelSet | None = None,
) -> ray.data.Dataset:
    """Tokenize (unless ``tokenized``: the rows hold the token columns already, as the job's
    read tasks leave them), score on the replicas, and (with ``rank_partitions``) shuffle the
    rows into that many partitions by group, where the task post-processes each group (a
    rerank ranks it; task mine counts each query's rows): the stages the job and
    :func:`crossenc.scorer` share. Rows keep the carried columns and gain the score columns,
    ``truncated`` and the internal ones (the error, metrics; see
    :data:`crossenc.output.writer.INTERNAL`). ``load_model`` false: the replicas load the model
    only if a row to score reaches them (output.incremental matched every row); ``counter``:
    the actor the replicas tell the rows they scored (:class:`crossenc.job.progress.ScoredRows`);
    ``models``: several models (:func:`crossenc.models.several.build_model_set`), each of whose
    replicas hold them all."""
    rt = cfg.runtime
    if models is None:  # a lone model; its tokenizer's spec only where it tokenizes here
        models = lone(cfg, info) if tokenized else build_model_set(cfg, {"": info})
    if not tokenized:
        ds = ds.map_batches(
            tokenize_models,
            fn_kwargs={"models": models},
            batch_size=rt.block_rows,
            batch_format="pyarrow",
            num_cpus=TOKENIZE_CPUS,
        )
    # one pool of replicas holding every model, or (model_pools per_model) a pool per model
    per_model = rt.model_pools == "per_model" and len(models.members) > 1
    pools = range(len(models.members)) if per_model else (None,)
    # on CPUs the pools share the reservation one replica of every model would make (their
    # models take turns at the cores as a shared replica's would); on GPUs, each its own
    cpus = rt.cpus_per_replica / (1 if rt.gpus_per_replica else len(pools))
    for pool in pools:
        ds = ds.map_batches(
            ScorerReplica,
            fn_constructor_kwargs={
                "cfg": cfg,
                "info": info,
                "load": load_model,
                "counter": counter,
                "models": models,
                "pool": pool,
            },
            batch_size=rt.block_rows,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=rt.replicas),
            num_cpus=cpus,
            num_gpus=rt.gpus_per_replica,
            resources=rt.resources_per_replica or None,
        )  # Ray restarts a dead scorer and retries its batch (max_restarts=-1 by default)
    if rank_partitions:
        task = task_for(cfg)
        ds = ds.groupby(task.group_by, num_partitions=rank_partitions).map_groups(
            task.post_group, batch_format="pyarrow"
        )
    return ds


def build_dataset(
    cfg: JobConfig,
    units: list[dict[str, object]],
    info: ModelInfo,
    run_id: str,
    writers: list[Any],
    options: WriterOptions,
    group_shuffle: bool = False,
    reference: dict[str, Any] | None = None,
    load_model: bool = True,
    counter: Any = None,
    models: ModelSet | None = None,
) -> ray.data.Dataset:
    """The lazy Ray Data pipeline; executing it hands scored rows to the writers and yields
    one progress row per block (rows handed over, and the parts of files that closed);
    ``group_shuffle``: a rerank's or mining's groups span files (shuffled by the group column);
    ``counter`` and ``models``: see :func:`scoring_stages`."""
    rt = cfg.runtime
    models = models or build_model_set(cfg, {"": info})
    ds = ray.data.from_items(units, override_num_blocks=max(1, min(len(units), 1000)))
    # Each row group is read and tokenized by one task: the texts never go through the object
    # store, and one kind of task (one worker process per CPU Ray gives them) does both.
    ds = ds.map_batches(
        read_tokenized,
        fn_kwargs={
            "storage": cfg.input,
            "columns": cfg.needed_columns(),
            "block_rows": rt.block_rows,
            "cfg": cfg,
            "info": info,
            "reference": reference,
            "models": models,
        },
        batch_size=1,
        batch_format="pyarrow",
        num_cpus=TOKENIZE_CPUS,
    )
    rows = sum(max(int(u["end"]) - int(u["start"]), 0) for u in units)  # type: ignore[call-overload]
    partitions = max(1, min(200, rows // rt.block_rows + 1))
    ranks = partitions if group_shuffle else None
    ds = scoring_stages(
        ds, cfg, info, ranks, tokenized=True, load_model=load_model, counter=counter, models=models
    )
    # The write tasks only wait on the writers: they reserve no CPU (a reservation of theirs
    # would keep tokenize tasks from the CPUs they leave idle), and as many run at a time as
    # there are writers (two per writer ran no faster), not a worker process per block.
    ds = ds.map_batches(
        write_block,
        fn_kwargs={
            "writers": writers,
            "out": cfg.output,
            "run_id": run_id,
            "options": replace(options, expected_rows={}),  # only the writers need those
        },
        batch_size=rt.block_rows,
        num_cpus=0,
        # (a dataset built without writers: tests)
        compute=ray.data.TaskPoolStrategy(size=max(1, len(writers))),
        batch_format="pyarrow",
    )
    # Reading and tokenizing outrun the scorers; without a budget of its own the queue ahead of
    # them grows with the input up to half of the cluster's object store.
    options_ = ds.context.execution_options
    options_.resource_limits = options_.resource_limits.copy(
        object_store_memory=rt.object_store_budget()
    )
    return ds
