"""The ``crossenc`` command: score, validate, schema."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import TYPE_CHECKING

import yaml

from crossenc.config import (
    ConfigError,
    JobConfig,
    config_reference,
    config_schema,
    load_config,
)
from crossenc.inspect_input import InputError, JobPlan, plan_job
from crossenc.postprocess import output_columns

if TYPE_CHECKING:
    from crossenc.pipeline import RunResult

EXIT_OK = 0
EXIT_CONFIG = 2  # bad config, or output.compare_to holds no committed run
EXIT_INPUT = 3  # bad input: missing file or column, wrong type (nothing was scored)
EXIT_FAILED = 4  # the run failed while scoring; nothing was committed
# The run committed, but input.on_bad_file=skip left files out, or more rows than
# output.max_dead_letter_fraction went to the dead letters.
EXIT_PARTIAL = 5
EXIT_DRIFT = 6  # the run committed, but moved past output.drift's thresholds (on_drift: fail)
EXIT_CONCURRENT = 7  # another run committed to the same output first; this one committed nothing

log = logging.getLogger("crossenc")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crossenc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {}
    for name, text in (
        ("score", "run the scoring job"),
        ("validate", "check config, input schema and model; score nothing"),
        ("plan", "files, rows, token lengths and cost; score nothing"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", required=True, help="YAML config file")
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY.PATH=VALUE",
            help="override a config value (YAML-parsed)",
        )
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
    p = sub.add_parser("schema", help="print the config's JSON Schema")
    p.add_argument("--markdown", action="store_true", help="a Markdown reference table instead")
    return parser


def describe_plan(cfg: JobConfig, plan: JobPlan) -> str:
    """What a run with this config would do, in a few lines."""
    info = plan.info
    outputs = output_columns(cfg, info)
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
        f"task: {cfg.task}"
        + (f" by {cfg.rerank.group_by}, top_k {cfg.rerank.top_k}" if cfg.task == "rerank" else ""),
        f"output: {cfg.output.path} columns {cfg.carried_columns() + outputs + ['truncated']}",
        f"runtime: {cfg.runtime.replicas} replica(s), {cfg.runtime.gpus_per_replica} GPU each",
    ]
    lines += [f"skipping bad file: {bad.reason}" for bad in plan.skipped]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``crossenc`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "schema":
        print(config_reference() if args.markdown else json.dumps(config_schema(), indent=2))
        return EXIT_OK
    try:
        overrides = list(args.overrides)
        if getattr(args, "report", None):
            overrides.append(f"output.report={json.dumps(args.report)}")
        cfg = load_config(args.config, overrides)
        log.info("config:\n%s", yaml.safe_dump(cfg.redacted(), sort_keys=False).rstrip())
        plan = plan_job(cfg)
        if args.command == "validate":
            from crossenc.pipeline import previous_summary

            previous_summary(cfg)  # output.compare_to must hold a committed run
    except ConfigError as err:
        print(f"crossenc: config error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except InputError as err:
        print(f"crossenc: input error: {err}", file=sys.stderr)
        return EXIT_INPUT
    if args.command == "plan":
        from crossenc.estimate import estimate

        result = estimate(cfg, plan, args.pairs_per_second, args.sample_rows)
        if args.json:
            print(json.dumps(result.as_dict(), indent=2))
        else:
            for key, value in result.as_dict().items():
                print(f"{key:>30}: {value}")
        return EXIT_OK
    if args.command == "validate":
        print(yaml.safe_dump(cfg.redacted(), sort_keys=False).rstrip())
        print("---")
        print(describe_plan(cfg, plan))
        print("config OK")
        return EXIT_OK
    from crossenc.output.commit import ConcurrentRunError
    from crossenc.pipeline import run_job, summary_lines

    try:
        result = run_job(cfg, plan)
    except ConfigError as err:
        print(f"crossenc: config error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except ConcurrentRunError as err:
        print(f"crossenc: concurrent run: {err}", file=sys.stderr)
        return EXIT_CONCURRENT
    except Exception as err:  # a failure during scoring: report it plainly, not a traceback
        bad = _cause(err, InputError)  # a bad file found while the run read it
        if bad is not None:
            print(f"crossenc: input error: {bad}", file=sys.stderr)
            return EXIT_INPUT
        log.exception("run failed")
        print(f"crossenc: run failed: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_FAILED
    print("\n".join(summary_lines(result)))
    if result.rows_scored >= 1000:  # small runs are all start-up: no use for estimates
        from crossenc.estimate import record_throughput

        record_throughput(cfg, result.rows_per_second / cfg.runtime.replicas)
    return exit_code(cfg, result)


def _cause(err: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first exception of ``kind`` in err's chain (Ray wraps a task's error, keeping its
    message), or None."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, kind):
            return err
        seen.add(id(err))
        err = getattr(err, "cause", None) or err.__cause__ or err.__context__
    return None


def exit_code(cfg: JobConfig, result: RunResult) -> int:
    """The exit code of a committed run: drift first, then skipped files or dead letters."""
    if result.drifted:
        for reason in result.summary["drift"]["reasons"]:
            print(f"crossenc: drift: {reason}", file=sys.stderr)
        if cfg.output.drift.on_drift == "fail":
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
