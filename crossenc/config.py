"""The job's configuration: one validated pydantic model, loaded from YAML with dotted overrides.

This is the only module that reads configuration files; everything else receives a
:class:`JobConfig` (or one of its parts) as an argument.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator


class ConfigError(ValueError):
    """A configuration that cannot run: unknown key, wrong type, bad combination of options."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StorageConfig(_Strict):
    """Object-store options, passed to ``s3fs.S3FileSystem``."""

    endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint, e.g. http://127.0.0.1:5555 (None: AWS)."
    )
    region: str | None = Field(None, description="Bucket region (None: from the environment).")
    key: SecretStr | None = Field(
        None, description="Access key id (None: the usual AWS environment / profile chain)."
    )
    secret: SecretStr | None = Field(None, description="Secret access key (never printed).")
    token: SecretStr | None = Field(None, description="Session token (never printed).")
    anon: bool = Field(False, description="Anonymous access to public buckets.")
    max_attempts: int = Field(
        8, ge=1, description="Retries of throttled, 5xx and timed-out requests (botocore)."
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="Further keyword arguments for s3fs.S3FileSystem."
    )

    def s3fs_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``s3fs.S3FileSystem`` (secrets revealed; never log this)."""
        kwargs: dict[str, Any] = {"anon": self.anon}
        if self.endpoint_url:
            kwargs["endpoint_url"] = self.endpoint_url
        for name in ("key", "secret", "token"):
            value = getattr(self, name)
            if value is not None:
                kwargs[name] = value.get_secret_value()
        config_kwargs: dict[str, Any] = {
            "retries": {"max_attempts": self.max_attempts, "mode": "adaptive"}
        }
        if self.region:
            kwargs["client_kwargs"] = {"region_name": self.region}
        kwargs["config_kwargs"] = config_kwargs
        return {**kwargs, **self.options}


class InputConfig(_Strict):
    """Where the pairs come from."""

    path: str = Field(
        ...,
        description="A Parquet file, a folder, or an object-store prefix (s3://bucket/prefix/).",
    )
    text_a: str = Field("query", description="Column with the first text (query, premise, q1).")
    text_b: str = Field("passage", description="Column with the second text (passage, hypothesis).")
    keep: list[str] = Field(
        default_factory=list, description="Columns copied unchanged to every output row."
    )
    storage: StorageConfig = Field(
        default_factory=StorageConfig, description="Object-store options for the input."
    )
    inspect_files: int = Field(
        2000,
        ge=1,
        description="Footers checked before scoring starts: every file's when there are no more "
        "(and always for a rerank), else an even sample of this many; the rest are read while "
        "the run scores (the driver checks them, read tasks refuse bad ones).",
    )
    on_bad_file: Literal["fail", "skip"] = Field(
        "fail",
        description="A corrupt or empty file, or one missing a column or with a wrong type: "
        "fail the run (naming the file), or skip it (listed in the manifest and summary).",
    )

    @model_validator(mode="after")
    def _distinct_columns(self) -> InputConfig:
        if self.text_a == self.text_b:
            raise ValueError(f"text_a and text_b name the same column {self.text_a!r}")
        if len(set(self.keep)) != len(self.keep):
            raise ValueError(f"keep lists a column twice: {self.keep}")
        return self


Activation = Literal["auto", "identity", "sigmoid", "softmax"]


class ModelConfig(_Strict):
    """Which cross-encoder scores the pairs, and how its logits become scores."""

    name: str = Field(
        "cross-encoder/ms-marco-MiniLM-L6-v2",
        description="Hugging Face Hub id, local folder, or object-store folder (s3://...).",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    activation: Activation = Field(
        "auto",
        description="auto: as sentence-transformers (the model's stored choice, else sigmoid for "
        "one output, identity for several); identity; sigmoid; softmax across outputs.",
    )
    max_length: int | None = Field(
        None, ge=8, description="Token limit of a pair (None: the tokenizer's and model's limit)."
    )
    labels: list[str] | None = Field(
        None, description="Label names overriding the model's id2label, in output order."
    )
    trust_remote_code: bool = Field(
        False, description="Run code shipped with the model repository (off: only built-ins)."
    )
    allow_pickle_weights: bool = Field(
        False, description="Allow pickle-format weights (*.bin); off: safetensors only."
    )
    prompt_name: str | None = Field(
        None,
        description="Which of the prompts saved with the model (config_sentence_transformers."
        "json) to use; None: the model's default_prompt_name, as sentence-transformers does.",
    )
    prompt: str | None = Field(
        None,
        description='A prompt text, overriding any saved one ("" for none): prepended to '
        "text_a, or the system message of a model with a chat template.",
    )
    truncation: Literal["longest_first", "only_second", "only_first"] = Field(
        "longest_first",
        description="How pairs longer than max_length are cut (the tokenizer's strategies; "
        "longest_first is what sentence-transformers does).",
    )
    long_text: Literal["truncate", "chunk"] = Field(
        "truncate",
        description="A pair longer than the model's limit: truncate it (model.truncation; "
        "the row's truncated is true), or chunk: split text_b into overlapping windows, each "
        "paired with the whole text_a as the tokenizer builds a pair, score every window and "
        "keep the best (MaxP; single-output models only, no chat templates). A row of n "
        "windows costs n forward rows, scored in the same token-budget batches; the output "
        "gains windows (int32, 1 for a pair that fits). A row is windowed when text_a leaves "
        "at least max(2 x chunk_overlap, a quarter of the window: max_length less the pair's "
        "special tokens) tokens for text_b, else truncated (truncated true, windows 1). A "
        "tiny BERT (max_length 64, passages 4-10x that, chunk_overlap 8) scored 9.8 windows "
        "per row, and its LocalScorer ran 2.5x slower than with truncate (447 against 1,125 "
        "rows/s; the forward passes alone 8.9x, about the windows per row: what a model whose "
        "forward pass dominates pays).",
    )
    chunk_overlap: int | None = Field(
        None,
        ge=0,
        description="long_text chunk: tokens of text_b shared by consecutive windows (the "
        "tokenizer's stride); under half the window, the model's max_length less the pair's "
        "special tokens. None: 64, or an eighth of the window where that is under 512 tokens.",
    )
    backend: Literal["torch", "onnx", "openvino"] = Field(
        "torch",
        description="torch; onnx: ONNX Runtime (CPU); openvino: the OpenVINO runtime (CPU, the "
        "openvino extra); both exported from the same folder once per node and cached under "
        "runtime.cache_dir. Sequence classifiers only.",
    )
    quantize: Literal["none", "int8", "int8-full"] = Field(
        "none",
        description="onnx or openvino backend, changes scores (a run checks them first: "
        "quality_gate). onnx: int8 dynamic quantization of the attention projections (int8), "
        "or of every MatMul (int8-full: faster, less faithful). openvino: int8 only, static "
        "post-training quantization (NNCF, its transformer preset) calibrated on "
        "model.calibration_sample pairs of the job's own input.",
    )
    calibration_sample: int = Field(
        300,
        ge=1,
        description="openvino with quantize int8: pairs the quantization calibrates on, a "
        "seeded sample of the job's input (whole rerank groups); a LocalScorer takes them from "
        "its first predict() unless given calibration pairs. Changes scores.",
    )
    compile: bool = Field(
        False,
        description="torch backend: torch.compile the model with frozen weights when the replica "
        "starts (CPU: 1.02x the default pre-packed model, after a one-off compile of 20-60 s).",
    )
    prepack: bool = Field(
        True,
        description="torch backend, CPU float32, without compile: linear layers on oneDNN's "
        "pre-packed weights, GELU fused (1.15-1.2x plain PyTorch; checked against it at load).",
    )
    prune_last_layer: bool = Field(
        True,
        description="BERT, RoBERTa, XLM-R, ELECTRA and CamemBERT (torch, onnx, openvino): compute "
        "the last layer for the first position only, the one the classification head reads "
        "(1.14-1.18x on MiniLM-L6; checked against the full model at load or export).",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="auto: bfloat16 on GPUs that support it (else float16) and on CPUs with "
        "bf16 matrix units (Intel AMX: 2.5-2.8x float32), else float32; openvino: float32 "
        "(its inference precision, which OpenVINO would otherwise lower to bf16 on such CPUs), "
        "but an int8 model's unquantized operations in bf16 where the CPU has BF16 (AVX-512 BF16 "
        "or AMX). "
        "float32 for scores equal to sentence-transformers' float32 to ~1e-6. A 16-bit dtype "
        "on CPU is checked against float32 before a run scores (quality_gate).",
    )
    storage: StorageConfig = Field(
        default_factory=StorageConfig, description="Object-store options when name is s3://..."
    )

    @model_validator(mode="after")
    def _overlap_under_half_the_limit(self) -> ModelConfig:
        # the window is max_length less the pair's special tokens: checked against the model's
        # tokenizer once it is loaded (crossenc.models.tokenize.check_chunking); this part needs
        # none
        if (
            self.long_text == "chunk"
            and self.max_length is not None
            and self.chunk_overlap is not None
            and 2 * self.chunk_overlap >= self.max_length
        ):
            raise ValueError(
                f"chunk_overlap {self.chunk_overlap} must be under half of max_length "
                f"{self.max_length} (windows must advance)"
            )
        return self


class RerankConfig(_Strict):
    """Ranking within groups (task: rerank)."""

    group_by: str = Field("qid", description="Column whose equal values form one group.")
    top_k: int | None = Field(
        None,
        ge=1,
        description="Write only the best k rows of each group (several models: the rows any "
        "model ranks in its best k).",
    )
    within_files: bool | None = Field(
        None,
        description="Every group's rows sit in one input file: rank inside each file as it is "
        "written (streaming, memory flat, resumable). None: decided from the group column's "
        "min/max in the Parquet footers (files whose ranges do not overlap); false: a shuffle "
        "across the whole input (memory grows with it, no resume).",
    )


class ClassifyConfig(_Strict):
    """Labelling (task: classify)."""

    threshold: float | None = Field(
        None, description="Single-output models only: label = score >= threshold."
    )


class EvaluateConfig(_Strict):
    """Metrics against gold labels in the input (task: evaluate)."""

    kind: Literal["rerank", "classify", "similarity"] = Field(
        "rerank",
        description="rerank: MRR@k, NDCG@k, MAP and Recall@k per query (gold: integer relevance "
        "grades, bool or 0/1); classify: accuracy, F1, precision, recall, the confusion matrix "
        "and, for a single-output model, average precision (gold: a label name or index, or 0/1 "
        "for a single-output model); similarity: Pearson and Spearman (gold: a number).",
    )
    gold: str = Field("relevance", description="The input column with the gold label.")
    group_by: str = Field("qid", description="kind rerank: the column whose values are queries.")
    at_k: int = Field(10, ge=1, description="kind rerank: the cutoff of MRR@k, NDCG@k, Recall@k.")
    relevant_from: int = Field(
        1, ge=1, description="kind rerank: the least grade that counts as relevant (MRR, MAP, R)."
    )
    bootstrap: int = Field(
        1000,
        ge=0,
        description="Resamples of the 95% confidence intervals over queries (rows for classify); "
        "0: none. Above 100,000 queries the interval is the normal one.",
    )
    seed: int = Field(0, description="Seed of the bootstrap and of the randomization test.")
    within_files: bool | None = Field(
        None,
        description="kind rerank: every query's rows sit in one input file: each output writer "
        "measures a file's queries once its rows are all there (streaming, memory flat, no "
        "rows read back). None: decided from the query column's min/max in the Parquet footers "
        "(files whose ranges do not overlap, gold labels of an integer or bool type), and "
        "where queries may span files, each query measured in a writer after a shuffle by query "
        "(not with output.mode resume); false: the driver reads the written rows' narrow "
        "columns back and measures them.",
    )
    compare_to: list[str] = Field(
        default_factory=list,
        description="kind rerank: outputs of earlier task evaluate runs of other models on the "
        "same labelled log; the leaderboard lists them, and per metric the paired difference "
        "over the queries both have, its 95% interval and p-values (randomization, paired t).",
    )

    @model_validator(mode="after")
    def _compare_rankings(self) -> EvaluateConfig:
        if self.compare_to and self.kind != "rerank":
            raise ValueError("evaluate.compare_to compares per-query metrics: kind rerank only")
        return self


class MineConfig(_Strict):
    """Hard negatives from a candidate log (task: mine), as sentence-transformers'
    ``mine_hard_negatives(cross_encoder=...)`` chooses them once its cross-encoder has rescored
    the candidates; the teacher is the model (several models: the mean of their scores)."""

    group_by: str | None = Field(
        None, description="The column whose values are queries (None: input.text_a itself)."
    )
    positive: str = Field(
        "positive",
        description="The column marking a query's positives: bool, or an integer grade (see "
        "relevant_from).",
    )
    relevant_from: int = Field(
        1, ge=1, description="An integer grade at least this marks a positive."
    )
    retriever_score: str | None = Field(
        None,
        description="The retriever's score of each candidate, higher is closer: the candidate "
        "pool is then the retriever's best range_max + (the query's positives), as "
        "sentence-transformers retrieves range_max + max_positives; None: every candidate.",
    )
    range_min: int = Field(
        0, ge=0, description="Skip the best range_min candidates by the teacher's score."
    )
    range_max: int | None = Field(
        None, ge=1, description="Consider the best range_max candidates (None: all of them)."
    )
    max_score: float | None = Field(None, description="Drop candidates scored above it.")
    min_score: float | None = Field(None, description="Drop candidates scored below it.")
    absolute_margin: float | None = Field(
        None,
        description="Drop candidates scored above (the query's lowest positive score - margin): "
        "likely false negatives.",
    )
    relative_margin: float | None = Field(
        None,
        description="Drop candidates scored above p - |p| * margin, p being the query's lowest "
        "positive score (0.05: NV-Retriever's TopK-PercPos 95%).",
    )
    num_negatives: int | None = Field(
        3,
        ge=1,
        description="Negatives per query (None: every candidate the filters and range leave; "
        "not with n-tuple).",
    )
    sampling_strategy: Literal["top", "random"] = Field(
        "top", description="top: the best-scored negatives; random: a seeded sample of them."
    )
    include_positives: bool = Field(
        False,
        description="Positives may be chosen as candidates (a full ranking for a reranking "
        "evaluation set); output_format n-tuple only.",
    )
    output_format: Literal["triplet", "n-tuple", "labeled-pair", "labeled-list", "distill"] = Field(
        "triplet",
        description="triplet: (query, positive, negative) rows; n-tuple: (query, positive, "
        "negative_1..n), queries with fewer negatives left out; labeled-pair: (query, "
        "passage, label); labeled-list: (query, [passages], [labels]); distill: (query, "
        "positive, negative, score_pos, score_neg, margin), what MarginMSE reads (several "
        "teachers: each one's score_pos_<name>, score_neg_<name>, margin_<name> too).",
    )
    output_scores: bool = Field(
        False,
        description="Add the teacher's scores (triplet, n-tuple: scores [positive, negatives]; "
        "labeled-*: score(s) in place of label(s)); raw logits unless model.activation says "
        "otherwise (task mine reads activation auto as identity).",
    )
    seed: int = Field(0, description="Seed of sampling_strategy random.")
    within_files: bool | None = Field(
        None,
        description="Every query's rows sit in one input file: each output writer mines a "
        "file's queries once its rows are all there (streaming, memory flat, resumable). None: "
        "decided from the query column's min/max in the Parquet footers; false: a shuffle "
        "of the whole input by query (memory grows with it, no resume).",
    )

    @model_validator(mode="after")
    def _ranges(self) -> MineConfig:
        if self.range_max is not None and self.range_min >= self.range_max:
            raise ValueError(
                f"mine.range_min ({self.range_min}) must be below mine.range_max ({self.range_max})"
            )
        if self.num_negatives is None and self.output_format == "n-tuple":
            raise ValueError(
                "mine.output_format n-tuple has num_negatives columns: set mine.num_negatives"
            )
        room = None if self.range_max is None else self.range_max - self.range_min
        if room is not None and self.num_negatives is not None and self.num_negatives > room:
            raise ValueError(
                f"mine.num_negatives {self.num_negatives} does not fit between range_min "
                f"{self.range_min} and range_max {self.range_max}"
            )
        if self.include_positives and self.output_format != "n-tuple":
            raise ValueError(
                "mine.include_positives keeps the ranking order of a query's candidates, which "
                f"output_format {self.output_format} does not hold: use output_format n-tuple"
            )
        return self


class DriftConfig(_Strict):
    """How far this run may move from the output.compare_to run before it counts as drift."""

    max_label_tvd: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Largest total variation distance between the two runs' label shares.",
    )
    max_score_ks: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Largest gap between the two runs' score CDFs (Kolmogorov-Smirnov, read "
        "at the previous run's percentiles), per score column.",
    )
    on_drift: Literal["warn", "fail"] = Field(
        "fail", description="warn: log and report it; fail: also exit with code 6."
    )


class FilesConfig(_Strict):
    """How large an output file grows before the writer closes it and starts the next."""

    max_rows: int = Field(1_000_000, ge=1, description="Rows (data and dead letters) per file.")
    max_mib: float = Field(256, gt=0, description="Size of a file, in MiB.")
    max_seconds: float = Field(
        120,
        gt=0,
        description="Seconds a file stays open: what a killed run loses at most, per writer, "
        "since only closed files survive a crash.",
    )


class CatalogConfig(_Strict):
    """The Iceberg catalog of output.format iceberg."""

    type: Literal["sql", "rest"] = Field(
        "sql",
        description="sql: pyiceberg's SqlCatalog (SQLite file by default, no server); rest: a "
        "REST catalog at uri.",
    )
    uri: str | None = Field(
        None,
        description="sql: a SQLite file path or SQLAlchemy URL (None: <output.path>/_catalog.db, "
        "local outputs only); rest: the catalog's URL.",
    )
    name: str = Field("crossenc", description="The catalog's name (pyiceberg's).")
    properties: dict[str, str] = Field(
        default_factory=dict,
        description="Further pyiceberg catalog properties (e.g. credential, warehouse).",
    )

    @model_validator(mode="after")
    def _rest_needs_uri(self) -> CatalogConfig:
        if self.type == "rest" and not self.uri:
            raise ValueError("output.catalog.uri: a rest catalog needs its URL")
        return self


class OutputConfig(_Strict):
    """Where the scored rows go."""

    path: str = Field(..., description="Output folder, local or s3://bucket/prefix/.")
    storage: StorageConfig = Field(
        default_factory=StorageConfig, description="Object-store options for the output."
    )
    format: Literal["parquet", "delta", "iceberg"] = Field(
        "parquet",
        description="parquet: a folder of Parquet files with a manifest and _SUCCESS; delta: "
        "a Delta Lake table at path (deltalake); iceberg: an Iceberg table (pyiceberg) in "
        "output.catalog, its data and metadata at path. A table gets one commit per run.",
    )
    mode: Literal["error", "overwrite", "resume", "append"] = Field(
        "error",
        description="error: refuse when committed output exists (a table: in this run's "
        "partition); overwrite: replace it on commit (a table: this run's partition, or the "
        "whole table without partition_by); resume: keep what an interrupted run with the same "
        "model and settings completed, score only the rest; append (tables only, their default): "
        "add this run's rows to the table.",
    )
    table: str | None = Field(
        None,
        description="output.format iceberg: the table identifier, namespace.name (created at "
        "the first commit, its location at output.path).",
    )
    catalog: CatalogConfig = Field(
        default_factory=CatalogConfig, description="output.format iceberg: the catalog."
    )
    partition_by: list[str] = Field(
        default_factory=list,
        description="Partition columns of a table; each is a constant column of every row, "
        "its value from partition_value (e.g. [dt]).",
    )
    partition_value: dict[str, str] = Field(
        default_factory=dict,
        description="This run's value of each partition_by column "
        "(--set output.partition_value.dt=2026-11-27).",
    )
    incremental: bool | Literal["skip"] = Field(
        False,
        description="true: pairs (text_a, text_b) an earlier run of the same scoring key (model, "
        "weights, activation, max_length, truncation, dtype...) scored are not scored again; "
        "their scores are copied from it, and every row gets a pair_hash column (BLAKE2b-128 of "
        "the two texts). skip: the same, but only the new pairs are written (a table that "
        "holds every night). The earlier runs: output.reuse_from.",
    )
    reuse_from: list[str] = Field(
        default_factory=list,
        description="output.incremental: where the earlier runs are, each a Parquet folder, a "
        "Delta table path or iceberg:<namespace.name> (optionally @<version>, #<col>=<value>); "
        "every run there with this run's scoring key is used. Empty: this output itself, its "
        "latest such run (incremental true) or all of them (skip).",
    )
    verify_sample: int = Field(
        1000,
        ge=0,
        description="output.incremental: pairs to score again before reusing scores an earlier "
        "run made under other versions of crossenc, transformers, tokenizers, torch or "
        "onnxruntime (its manifest's stack; none recorded: other). A seeded sample of the pairs "
        "it would reuse, scored in the driver; the scores are reused only if they agree within "
        "the dtype's tolerance (largest difference / mean: float32 1e-5 / 1e-5, 16-bit "
        "0.05 / 0.002), else every pair is scored. 0: reuse without checking.",
    )
    dead_letter: str | None = Field(
        None,
        description="Where unscorable rows go, with their reason (None: <path>/_dead_letter/, "
        "which Parquet readers skip).",
    )

    max_dead_letter_fraction: float = Field(
        0.0,
        ge=0,
        le=1,
        description="More dead-lettered rows than this fraction of rows read: the run commits "
        "but exits with code 5, as it does when input.on_bad_file=skip left files out.",
    )
    report: str | None = Field(
        None, description="Write a self-contained HTML report with plots here (local or s3://)."
    )
    compare_to: str | None = Field(
        None,
        description="A previous run's output folder (same storage options): its label shares "
        "and score quantiles are compared with this run's, the nightly drift check. A table: "
        "a Delta table's path or iceberg:<namespace.name> (in output.catalog), optionally "
        "@<version> and #<col>=<value> (the latest run of that partition).",
    )
    drift: DriftConfig = Field(
        default_factory=DriftConfig, description="Thresholds of the compare_to check."
    )
    files: FilesConfig = Field(
        default_factory=FilesConfig,
        description="Output file size: a file closes at whichever bound it reaches first.",
    )

    @model_validator(mode="before")
    @classmethod
    def _table_defaults(cls, data: Any) -> Any:
        # A table appends by default; YAML reads 2026-11-27 as a date: partition values are text.
        if isinstance(data, dict):
            data = dict(data)
            if data.get("format") in ("delta", "iceberg") and "mode" not in data:
                data["mode"] = "append"
            values = data.get("partition_value")
            if isinstance(values, dict):
                data["partition_value"] = {
                    k: v if v is None or isinstance(v, str) else str(v) for k, v in values.items()
                }
        return data

    @model_validator(mode="after")
    def _check_table(self) -> OutputConfig:
        if self.mode == "append" and self.format == "parquet":
            raise ValueError(
                "output.mode append needs a table (output.format delta or iceberg); a Parquet "
                "folder holds one run: use overwrite"
            )
        if len(set(self.partition_by)) != len(self.partition_by):
            raise ValueError(f"output.partition_by lists a column twice: {self.partition_by}")
        missing = [c for c in self.partition_by if c not in self.partition_value]
        if missing:
            raise ValueError(
                f"output.partition_value.{missing[0]} is not set: every output.partition_by "
                f"column needs this run's value (--set output.partition_value.{missing[0]}=...)"
            )
        extra = sorted(set(self.partition_value) - set(self.partition_by))
        if extra:
            raise ValueError(
                f"output.partition_value.{extra[0]} names no output.partition_by column "
                f"({self.partition_by})"
            )
        if self.reuse_from and not self.incremental:
            raise ValueError(
                "output.reuse_from names earlier runs to reuse scores from: set "
                "output.incremental to true (or skip)"
            )
        if self.incremental == "skip" and self.format == "parquet" and not self.reuse_from:
            raise ValueError(
                "output.incremental skip writes only the new pairs: a Parquet folder holds one "
                "run, so the next night would lose the rest; write to a table (output.format "
                "delta or iceberg) or name the earlier folders in output.reuse_from"
            )
        if self.format == "iceberg":
            if not self.table or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+", self.table):
                raise ValueError(
                    f"output.table {self.table!r}: output.format iceberg needs a table "
                    "identifier namespace.name (letters, digits, _)"
                )
            remote = self.path.startswith(("s3://", "s3a://"))
            if self.catalog.type == "sql" and self.catalog.uri is None and remote:
                raise ValueError(
                    "output.catalog.uri is not set: the default SQLite catalog lives beside a "
                    "local output; for an s3:// output give a SQLite file or SQLAlchemy URL, or a "
                    "rest catalog"
                )
        elif self.table is not None:
            raise ValueError("output.table names an Iceberg table: set output.format iceberg")
        return self

    def dead_letter_path(self) -> str:
        """The dead-letter folder, on the output's store."""
        return self.dead_letter or self.path.rstrip("/") + "/_dead_letter"


class RuntimeConfig(_Strict):
    """How the work is spread over Ray."""

    replicas: int = Field(
        1,
        ge=1,
        description="Scorer actors, each holding one model replica (unset, on crossenc's own "
        "in-process Ray: one per 8 cores).",
    )
    model_pools: Literal["shared", "per_model"] = Field(
        "shared",
        description="models: shared, each replica holds every model and scores a block with "
        "each in turn; per_model, a pool of runtime.replicas actors per model, one after the "
        "other on the same read, for models that do not fit one replica's memory together "
        "(on GPUs each actor reserves gpus_per_replica and cpus_per_replica; on CPUs the pools "
        "share cpus_per_replica).",
    )
    gpus_per_replica: float = Field(0, ge=0, description="GPUs per scorer (1 on GPU clusters).")
    cpus_per_replica: float = Field(1, gt=0, description="CPUs reserved per scorer actor.")
    resources_per_replica: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources per scorer, to pin replicas to a node group "
        '(e.g. {"scorer": 1}).',
    )
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="Intra-op threads per CPU scorer (None: cpus_per_replica; on crossenc's own "
        "in-process Ray, with cpus_per_replica unset too: the machine's cores / replicas).",
    )
    batch_tokens: int | None = Field(
        None,
        ge=64,
        description="Token budget of one forward pass (rows x padded length; None: 4096 on "
        "CPU, 65536 on a GPU).",
    )
    max_batch_rows: int | None = Field(
        None,
        ge=1,
        description="Upper bound on rows in one forward pass (None: 256 on CPU, 1024 on a GPU).",
    )
    block_rows: int = Field(
        4096, ge=1, description="Rows handed to a tokenizer task or scorer call at a time."
    )
    object_store_mb: int | None = Field(
        None,
        ge=64,
        description="Object-store budget of the job's pipeline in MiB: bounds the blocks queued "
        "between stages, so memory stays flat as the input grows (None: 128 per replica, at "
        "least 256).",
    )
    cache_dir: str | None = Field(
        None, description="Local cache for models copied from object stores (None: ~/.cache)."
    )
    writers: int | None = Field(
        None,
        ge=1,
        description="Output writer actors; each keeps one file open (None: one per replica).",
    )

    def batch_budget(self, gpu: bool) -> tuple[int, int]:
        """(batch_tokens, max_batch_rows), unset ones by device. On an H200 (two runs) the GPU
        defaults ran the bf16 engine 1.6-1.8x (MiniLM-L6) and 1.09-1.13x (BERT-base) faster than
        a 16384-token budget, which leaves the card waiting on Python between batches. On CPU,
        4096 tokens ran MiniLM-L6 1.12x faster than 16384 (2 cores, batches that stay in cache).
        """
        tokens, rows = (65536, 1024) if gpu else (4096, 256)
        return self.batch_tokens or tokens, self.max_batch_rows or rows

    def on_machine(self, cores: int) -> RuntimeConfig:
        """These settings for crossenc's own in-process Ray on a machine of ``cores`` CPUs: what
        the config leaves unset sizes the scorers to the machine. Replicas: one per 8 cores
        (intra-op threads scale well up to about 8); torch threads: the cores shared among them,
        since reading, tokenizing and writing take a few percent of the CPU; one CPU reserved
        per replica, so those stages are always scheduled beside the scorers. GPU settings and
        anything set are kept."""
        if self.gpus_per_replica or {"torch_threads", "cpus_per_replica"} & self.model_fields_set:
            return self
        replicas = self.replicas if "replicas" in self.model_fields_set else max(1, cores // 8)
        return self.model_copy(
            update={"replicas": replicas, "torch_threads": max(1, cores // replicas)}
        )

    def cpu_threads(self) -> int:
        """Intra-op threads of a CPU replica: torch_threads, else its reserved CPUs."""
        return self.torch_threads or max(1, int(self.cpus_per_replica))

    def object_store_budget(self) -> int:
        """The pipeline's object-store budget in bytes (object_store_mb, or its default)."""
        return (self.object_store_mb or max(256, 128 * self.replicas)) * 2**20


class QualityGateConfig(_Strict):
    """The check of a path faster than float32 before a run scores anything: int8 (onnx,
    openvino), or a 16-bit model.dtype on CPU (torch, openvino)."""

    sample: int = Field(
        2000,
        ge=0,
        description="Pairs of a seeded sample of the input (rerank: whole groups), scored in "
        "the driver by torch float32 and by the run's path, compared before any row is "
        "scored; the figures go to the summary and manifest (gate). 0: no check.",
    )
    min_spearman: float = Field(
        0.995,
        ge=-1,
        le=1,
        description="Lowest Spearman correlation of the two paths' scores (each score column's; "
        "the lowest counts). Below it the run fails before scoring (exit code 2).",
    )
    min_label_agreement: float = Field(
        0.995,
        ge=0,
        le=1,
        description="task classify: lowest share of sampled pairs given the same label.",
    )
    min_top10_overlap: float = Field(
        0.0,
        ge=0,
        le=1,
        description="task rerank: lowest mean share of a group's top 10 (or all its rows, if "
        "fewer) that both paths rank there (0: reported, not checked).",
    )
    max_abs_diff: float | None = Field(
        None,
        gt=0,
        description="Largest |fast - float32| of a score allowed (None: reported, not checked).",
    )
    seed: int = Field(0, description="Seed of the sample (and of the int8 calibration sample).")


class JobConfig(_Strict):
    """A whole crossenc job."""

    input: InputConfig
    model: ModelConfig = Field(
        default_factory=ModelConfig,
        description="The model; with models set, the first of them (leave it out).",
    )
    models: dict[str, ModelConfig] = Field(
        default_factory=dict,
        description="Several models in one pass, by short name (lowercase letters, digits, _): "
        "each adds its own columns, score_<name> (score_<name>_<label> for a multi-output "
        "model, label_<name> for task classify). The input is read once and tokenized once per "
        "distinct tokenizer; every replica holds every model. The first is the baseline of "
        "task evaluate's comparison. Leave model out when set.",
    )
    task: Literal["score", "classify", "rerank", "evaluate", "mine"] = Field(
        "score",
        description="score: one score column; classify: labels; rerank: ranks in groups; "
        "evaluate: scores and metrics against the input's gold labels (see evaluate); mine: "
        "every candidate scored, and hard negatives chosen per query (see mine).",
    )
    rerank: RerankConfig = Field(default_factory=RerankConfig)
    classify: ClassifyConfig = Field(default_factory=ClassifyConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    mine: MineConfig = Field(default_factory=MineConfig)
    output: OutputConfig
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    quality_gate: QualityGateConfig = Field(
        default_factory=QualityGateConfig,
        description="How a path faster than float32 is checked against it before a run scores.",
    )

    @model_validator(mode="before")
    @classmethod
    def _first_of_models(cls, data: Any) -> Any:
        # models: the first one is also ``model``, which every single-model setting reads
        # (the dumped config, holding both, loads again)
        if isinstance(data, dict) and data.get("models") and "model" not in data:
            models = data["models"]
            if isinstance(models, dict):
                data = {**data, "model": next(iter(models.values()))}
        return data

    @model_validator(mode="after")
    def _several_models(self) -> JobConfig:
        if not self.models:
            return self
        bad = [n for n in self.models if not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", n)]
        if bad:
            raise ValueError(
                f"models.{bad[0]}: a model's short name names its columns (score_<name>): "
                "lowercase letters, digits and _, starting with a letter, at most 32"
            )
        if self.model != next(iter(self.models.values())):
            raise ValueError("set model or models, not both (with models, model is the first)")
        left_out = {
            "model.long_text chunk": any(m.long_text == "chunk" for m in self.models.values()),
        }
        for what, used in left_out.items():
            if used and len(self.models) > 1:
                raise ValueError(
                    f"{what} takes one model; models names {len(self.models)} "
                    f"({', '.join(self.models)}): run it once per model"
                )
        return self

    def model_views(self) -> list[tuple[str, JobConfig]]:
        """Each model of the run with the config as it sees it (``model`` set to it): the
        short names of ``models``, or one entry named "" for a lone ``model``."""
        if not self.models:
            return [("", self)]
        return [
            (name, self.model_copy(update={"model": model, "models": {}}))
            for name, model in self.models.items()
        ]

    @model_validator(mode="after")
    def _teacher_logits(self) -> JobConfig:
        # task mine: a teacher's raw logits are what MarginMSE distils (activation auto)
        if self.task != "mine":
            return self
        if self.models:
            models = {
                n: m.model_copy(update={"activation": "identity"}) if m.activation == "auto" else m
                for n, m in self.models.items()
            }
            object.__setattr__(self, "models", models)
            object.__setattr__(self, "model", next(iter(models.values())))
        elif self.model.activation == "auto":
            logits = self.model.model_copy(update={"activation": "identity"})
            object.__setattr__(self, "model", logits)
        return self

    @model_validator(mode="after")
    def _evaluate_sees_every_row(self) -> JobConfig:
        if self.task in ("evaluate", "mine") and self.output.incremental == "skip":
            done = "computes its metrics" if self.task == "evaluate" else "mines its negatives"
            raise ValueError(
                f"task {self.task} {done} over the rows written, and output.incremental "
                "skip leaves reused rows out: use output.incremental true"
            )
        return self

    @model_validator(mode="after")
    def _partition_columns_are_new(self) -> JobConfig:
        taken = set(self.carried_columns()) | {"score", "label", "rank", "truncated", "windows"}
        clash = [
            c for c in self.output.partition_by if c in taken or c.startswith(("score_", "label_"))
        ]
        if clash:
            raise ValueError(
                f"output.partition_by column {clash[0]!r} is already an output column "
                "(input.keep, rerank.group_by or a score column): name the partition column "
                "differently"
            )
        return self

    def group_column(self) -> str | None:
        """The column whose values form groups the job handles together: a rerank's groups,
        an evaluation's queries (kind rerank); None for other tasks."""
        if self.task == "rerank":
            return self.rerank.group_by
        if self.task == "evaluate" and self.evaluate.kind == "rerank":
            return self.evaluate.group_by
        if self.task == "mine":
            return self.mine.group_by or self.input.text_a
        return None

    def carried_columns(self) -> list[str]:
        """Input columns copied to the output: the kept ones, the group key of a rerank, and the
        gold labels (and queries) of an evaluation."""
        cols = list(self.input.keep)
        if self.task == "rerank":
            cols.append(self.rerank.group_by)
        if self.task == "evaluate":
            cols.append(self.evaluate.gold)
            if self.evaluate.kind == "rerank":
                cols.append(self.evaluate.group_by)
        if self.task == "mine":  # the training set's texts, and what chooses among them
            cols += [self.input.text_a, self.input.text_b]
            cols += [c for c in (self.mine.group_by, self.mine.positive) if c]
            cols += [self.mine.retriever_score] if self.mine.retriever_score else []
        return list(dict.fromkeys(cols))

    def needed_columns(self) -> list[str]:
        """Input columns the job reads: the two texts and the carried columns."""
        return list(dict.fromkeys([self.input.text_a, self.input.text_b, *self.carried_columns()]))

    def redacted(self) -> dict[str, Any]:
        """The config as plain data with every secret masked, safe to print or log."""
        return self.model_dump(mode="json")

    def _model_fingerprint(self) -> dict[str, Any]:
        # compile, prepack and prune_last_layer change speed, not scores (within 1e-6): a
        # resume may flip them.
        # Keys added since runs were first fingerprinted count only when set, so that a run
        # interrupted before they existed still resumes (chunk_overlap only with chunk).
        model = self.model.model_dump(
            mode="json", exclude={"storage", "compile", "prepack", "prune_last_layer"}
        )
        for key, default in (("prompt", None), ("prompt_name", None), ("long_text", "truncate")):
            if model.get(key) == default:
                del model[key]
        if self.model.long_text != "chunk":
            del model["chunk_overlap"]
        if self.model.backend != "openvino" or self.model.quantize == "none":
            del model["calibration_sample"]  # calibrates only openvino's int8
        return model

    def scoring_key(self, model: dict[str, Any]) -> str:
        """What makes two runs' scores of the same pair interchangeable (output.incremental):
        the model's fingerprint (``model``: name, revision, weights, activation, labels,
        max_length, kind, prompt; see :func:`crossenc.models.load.model_fingerprint`) and the
        settings that change scores (truncation, long_text, dtype, backend, quantize...)."""
        relevant = {"model": model, "settings": self._model_fingerprint()}
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:32]

    def fingerprint(self) -> str:
        """Hash of the settings that change scores (model, activation, task, columns)."""
        relevant = {
            "model": self._model_fingerprint(),
            "task": self.task,
            # within_files changes how ranks are computed (in files or by shuffle), not them
            "rerank": self.rerank.model_dump(mode="json", exclude={"within_files"}),
            "classify": self.classify.model_dump(mode="json"),
            "text_a": self.input.text_a,
            "text_b": self.input.text_b,
        }
        if len(self.models) > 1:  # each model's columns
            relevant["models"] = {n: v._model_fingerprint() for n, v in self.model_views()}
        if self.task == "evaluate":  # its carried columns
            relevant["evaluate"] = self.evaluate.model_dump(
                mode="json", include={"kind", "gold", "group_by"}
            )
        if self.task == "mine":  # what it chooses (within_files: where, not what)
            relevant["mine"] = self.mine.model_dump(mode="json", exclude={"within_files"})
        if self.output.incremental:  # the output's columns (pair_hash) and rows (skip) differ
            relevant["incremental"] = self.output.incremental
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def _format_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {loc}: {msg}")
    return "invalid config:\n" + "\n".join(lines)


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one ``dotted.key=value`` override in place; the value is parsed as YAML."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} is not of the form key.path=value")
    key, raw = assignment.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {assignment!r} names no key")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = yaml.safe_load(raw)


def build_config(data: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> JobConfig:
    """Validate plain data (plus overrides) into a :class:`JobConfig`, or raise ConfigError."""
    data = json.loads(json.dumps(data))  # deep copy, plain types only
    for assignment in overrides:
        apply_override(data, assignment)
    try:
        return JobConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> JobConfig:
    """Load a YAML config file, apply ``key.path=value`` overrides and validate it."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    try:
        return build_config(data, overrides)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def config_schema() -> dict[str, Any]:
    """The JSON Schema of the job config."""
    return JobConfig.model_json_schema()


def config_reference() -> str:
    """A Markdown table of every config key, its type, default and description."""
    rows = ["| key | type | default | description |", "|---|---|---|---|"]

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            key = f"{prefix}{name}"
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                rows.append(f"| `{key}` | section | | {field.description or ann.__doc__} |")
                walk(ann, key + ".")
                continue
            if get_origin(ann) is Literal:
                kind = " / ".join(str(a) for a in get_args(ann))
            else:
                kind = str(ann).replace("typing.", "").replace("pydantic.types.", "")
                kind = kind.replace("<class '", "").replace("'>", "").replace("|", "or")
            default = (
                "required"
                if field.is_required()
                else (
                    "[]"
                    if field.default_factory is list
                    else "{}"
                    if field.default_factory is dict
                    else json.dumps(field.default)
                )
            )
            rows.append(f"| `{key}` | {kind} | `{default}` | {field.description} |")

    walk(JobConfig, "")
    return "\n".join(rows)
