"""The ``crossenc`` command: score, validate, plan, history, doctor, schema."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import TYPE_CHECKING

import yaml

from crossenc.config import (
    JobConfig,
    config_reference,
    config_schema,
    load_config,
)
from crossenc.errors import (  # noqa: F401  (the exit codes are this module's interface too)
    EXIT_BUG,
    EXIT_CONCURRENT,
    EXIT_CONFIG,
    EXIT_DRIFT,
    EXIT_ENVIRONMENT,
    EXIT_FAILED,
    EXIT_INPUT,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_STORAGE,
    explain,
)
from crossenc.inputs.plan import JobPlan, plan_job
from crossenc.models.describe import ModelInfo
from crossenc.models.load import CAUSAL_LM
from crossenc.models.several import named
from crossenc.tasks import task_for

if TYPE_CHECKING:
    from crossenc.job.result import RunResult

log = logging.getLogger("crossenc")


def _add_overrides(p: argparse.ArgumentParser) -> None:
    """The ``--set KEY.PATH=VALUE`` option (repeatable)."""
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a config value (YAML-parsed)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crossenc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {}
    for name, text in (
        ("score", "run the scoring job"),
        ("validate", "check config, input schema and model; score nothing"),
        ("plan", "files, rows, token lengths and cost; score nothing"),
        ("history", "the runs committed to output.path (a table's from its commit metadata)"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", required=True, help="YAML config file")
        _add_overrides(p)
        commands[name] = p
    commands["score"].add_argument(
        "--report", metavar="PATH", help="write an HTML report here (sets output.report)"
    )
    p = commands["plan"]
    p.add_argument(
        "--pairs-per-second",
        type=float,
        default=None,
        help="throughput of one replica (default: what crossenc measured before)",
    )
    p.add_argument("--sample-rows", type=int, default=2000, help="pairs to tokenize")
    p.add_argument("--json", action="store_true", help="print JSON")
    commands["history"].add_argument("--json", action="store_true", help="print JSON lines")
    p = sub.add_parser(
        "doctor",
        help="versions, hardware, the cluster and a config's locations: what would stop a run",
    )
    p.add_argument("--config", help="also check this config's input, output and model")
    _add_overrides(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p = sub.add_parser("schema", help="print the config's JSON Schema")
    p.add_argument("--markdown", action="store_true", help="a Markdown reference table instead")
    return parser


def model_kind_words(info: ModelInfo) -> str:
    """How the model scores, in words: "causal-LM reranker (Qwen3ForCausalLM): ..."."""
    arch = f" ({info.architecture})" if info.architecture else ""
    if info.kind == CAUSAL_LM and info.score_tokens is not None:
        words = [f"{w!r} ({i})" for w, i in zip(info.score_words, info.score_tokens, strict=False)]
        how = " - ".join(f"logit({w})" for w in words)
        return f"causal-LM reranker{arch}: {how} at the last position, left padding"
    return f"sequence classification{arch}, {info.padding_side} padding"


def describe_plan(cfg: JobConfig, plan: JobPlan) -> str:
    """What a run with this config would do, in a few lines."""
    info = plan.info
    outputs = [
        named(column, name)
        for name, view in cfg.model_views()
        for column in task_for(view).columns(plan.model_infos(cfg)[name])
    ]
    extra = (["windows"] if cfg.model.long_text == "chunk" else []) + ["truncated"]
    files = f"{len(plan.files)} Parquet file(s), {plan.rows} rows"
    if plan.pending:
        files = (
            f"{len(plan.files) + len(plan.skipped) + len(plan.pending)} Parquet file(s), "
            f"~{plan.rows_estimate} rows (footers of {len(plan.files) + len(plan.skipped)} "
            "checked, an even sample; the rest are checked as the run reads them)"
        )
    lines = [
        f"input: {files}, pairs ({cfg.input.text_a}, {cfg.input.text_b})",
        f"model: {cfg.model.name} ({info.model_type}, {info.num_labels} output(s): "
        f"{', '.join(info.labels)}), activation {info.activation}, max_length {info.max_length}",
        f"model kind: {model_kind_words(info)}",
        *(
            f"model {name}: {view.model.name} ({other.num_labels} output(s)), activation "
            f"{other.activation}, max_length {other.max_length}"
            for (name, view), (_, other) in zip(cfg.model_views()[1:], plan.others, strict=True)
        ),
        "prompt: "
        + (repr(info.prompt) if info.prompt else "none")
        + (", pairs rendered by the model's chat template" if info.chat_template else ""),
        f"task: {cfg.task}"
        + (f" by {cfg.rerank.group_by}, top_k {cfg.rerank.top_k}" if cfg.task == "rerank" else "")
        + (
            f" ({cfg.evaluate.kind} against {cfg.evaluate.gold}"
            + (f", queries by {cfg.evaluate.group_by}" if cfg.evaluate.kind == "rerank" else "")
            + ")"
            if cfg.task == "evaluate"
            else ""
        ),
        f"output: {cfg.output.path} ({cfg.output.format}"
        + (f" table {cfg.output.table}" if cfg.output.table else "")
        + f") columns {cfg.carried_columns() + outputs + extra + cfg.output.partition_by}",
        f"runtime: {cfg.runtime.replicas} replica(s), {cfg.runtime.gpus_per_replica} GPU each",
    ]
    lines += [f"skipping bad file: {bad.reason}" for bad in plan.skipped]
    return "\n".join(lines)


def name_ray_auth_mode() -> None:
    """Ray (2.60 here) turns token authentication on for a cluster that ``ray.init`` starts and
    logs a notice saying so unless RAY_AUTH_MODE names a mode. The in-process Ray of
    ``crossenc score`` (no RAY_ADDRESS) keeps Ray's default, token, named before Ray is first
    imported (Ray reads the variable then): the notice, which asks nothing of the user, is not
    printed. A mode the user set is kept; a cluster's (RAY_ADDRESS) is the cluster's own."""
    if not os.environ.get("RAY_ADDRESS") and "ray" not in sys.modules:
        os.environ.setdefault("RAY_AUTH_MODE", "token")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``crossenc`` console script; returns the exit code.

    Every failure ends with one ``crossenc: ...`` line on stderr and a documented exit code
    (see :mod:`crossenc.errors`), never a traceback: an unexpected error writes its traceback
    to a file and names it.
    """
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "schema":
        print(config_reference() if args.markdown else json.dumps(config_schema(), indent=2))
        return EXIT_OK
    if args.command == "score":
        name_ray_auth_mode()
    loaded: list[JobConfig] = []  # the config, once loaded: the messages' hints read it
    try:
        if args.command == "doctor":  # a report of its own: its problems are lines in it
            from crossenc.doctor import run_doctor

            return run_doctor(args.config, args.overrides, args.json)
        return _command(args, loaded)
    except Exception as err:
        command = list(argv) if argv is not None else sys.argv[1:]
        code, message = explain(err, loaded[0] if loaded else None, command)
        print(message, file=sys.stderr)
        return code


def _command(args: argparse.Namespace, loaded: list[JobConfig]) -> int:
    """validate, plan or score; raises what :func:`crossenc.errors.explain` words."""
    overrides = list(args.overrides)
    if getattr(args, "report", None):
        overrides.append(f"output.report={json.dumps(args.report)}")
    cfg = load_config(args.config, overrides)
    loaded.append(cfg)
    if args.command == "history":  # reads the output only: no input, no model
        print_history(cfg, args.json)
        return EXIT_OK
    log.info("config:\n%s", yaml.safe_dump(cfg.redacted(), sort_keys=False).rstrip())
    plan = plan_job(cfg)
    if args.command == "plan":
        from crossenc.job.estimate import estimate

        result = estimate(cfg, plan, args.pairs_per_second, args.sample_rows)
        if result.feed_warning:
            log.warning("%s", result.feed_warning)
        if args.json:
            print(json.dumps(result.as_dict(), indent=2))
        else:
            for key, value in result.as_dict().items():
                print(f"{key:>30}: {value}")
        return EXIT_OK
    if args.command == "validate":
        from crossenc.job.prepare import previous_summary

        previous_summary(cfg)  # output.compare_to must hold a committed run
        print(yaml.safe_dump(cfg.redacted(), sort_keys=False).rstrip())
        print("---")
        print(describe_plan(cfg, plan))
        print("config OK")
        return EXIT_OK
    from crossenc.job.result import summary_lines
    from crossenc.job.run_job import run_job

    result = run_job(cfg, plan)
    print("\n".join(summary_lines(result)))
    if result.rows_scored >= 1000:  # small runs are all start-up: no use for estimates
        from crossenc.job.estimate import record_throughput

        try:
            record_throughput(cfg, result.rows_per_second / cfg.runtime.replicas)
        except OSError as err:  # the run is committed: a full or read-only cache cannot undo it
            log.warning("throughput not recorded for later plans: %s", err)
    return exit_code(cfg, result)


HISTORY_COLUMNS = (
    "version",
    "time",
    "run_id",
    "operation",
    "partition",
    "rows_written",
    "rows_dead_lettered",
    "model",
    "config_hash",
)


def print_history(cfg: JobConfig, as_json: bool = False) -> None:
    """Print the runs committed to output.path, oldest first: one line each (JSON lines with
    ``--json``, every recorded fact)."""
    from crossenc.output.committers import committer_for

    rows = committer_for(cfg.output).history()
    if as_json:
        for row in rows:
            print(json.dumps(row, sort_keys=True))
        return
    cells = [
        [
            ",".join(f"{k}={v}" for k, v in row[c].items()) if c == "partition" else str(row[c])
            for c in HISTORY_COLUMNS
        ]
        for row in rows
    ]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(HISTORY_COLUMNS)]
    for line in [list(HISTORY_COLUMNS), *cells]:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())
    if not rows:
        print(f"(no crossenc run committed to {cfg.output.path})")


def exit_code(cfg: JobConfig, result: RunResult) -> int:
    """The exit code of a committed run: drift first (output.incremental's stored scores that
    a new stack scores otherwise count as drift), then skipped files or dead letters."""
    if result.rescored:
        print(f"crossenc: drift: reuse: {result.summary['reuse']['reason']}", file=sys.stderr)
    if result.drifted:
        for reason in result.summary["drift"]["reasons"]:
            print(f"crossenc: drift: {reason}", file=sys.stderr)
    if (result.drifted or result.rescored) and cfg.output.drift.on_drift == "fail":
        return EXIT_DRIFT
    for reason in result.skipped:
        print(f"crossenc: skipped bad file: {reason}", file=sys.stderr)
    dead_fraction = result.rows_dead_lettered / max(result.rows_read, 1)
    too_many_dead = dead_fraction > cfg.output.max_dead_letter_fraction
    if too_many_dead:
        print(
            f"crossenc: {result.rows_dead_lettered} of {result.rows_read} rows dead-lettered "
            f"({dead_fraction:.2%} > output.max_dead_letter_fraction "
            f"{cfg.output.max_dead_letter_fraction:.2%})",
            file=sys.stderr,
        )
    return EXIT_PARTIAL if result.files_skipped or too_many_dead else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
