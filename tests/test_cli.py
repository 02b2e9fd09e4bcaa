"""The crossenc command: presets, validation, bad configs refused with the problem named."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from crossenc.cli import EXIT_CONFIG, EXIT_INPUT, EXIT_OK, main
from crossenc.config import JobConfig, load_config
from crossenc.testing import NLI_LABELS, write_pairs
from tests.helpers import read_output

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

PRESETS = {  # preset -> (matching tiny model, its text columns)
    "msmarco-rerank": (("bert", 1), ("query", "passage")),
    "stsb-similarity": (("roberta", 1), ("sentence1", "sentence2")),
    "quora-duplicates": (("roberta", 1), ("question1", "question2")),
    "qnli": (("electra", 1), ("question", "sentence")),
    "nli-labels": (("deberta-v2", 3), ("premise", "hypothesis")),
    "evaluate-rerank": (("bert", 1), ("query", "passage")),
    "mine-hard-negatives": (("bert", 1), ("query", "passage")),
}
GOLD = {  # write_pairs' int64 column as the gold grade, positive flag and retriever score
    "evaluate-rerank": ["--set", "evaluate.gold=pair_id"],
    "mine-hard-negatives": [
        "--set",
        "mine.positive=pair_id",
        "--set",
        "mine.retriever_score=pair_id",
    ],
}


def _args(command, preset, model, data, out, *extra):
    return [
        command,
        "--config",
        str(CONFIGS / f"{preset}.yaml"),
        "--set",
        f"model.name={model}",
        "--set",
        f"input.path={data}",
        "--set",
        f"output.path={out}",
        *extra,
    ]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_validates_against_matching_model(preset, models, tmp_path, capsys):
    (arch_outputs, columns) = PRESETS[preset]
    write_pairs(tmp_path / "data", rows=20, columns=columns)
    code = main(
        _args(
            "validate",
            preset,
            models[arch_outputs],
            tmp_path / "data",
            tmp_path / "out",
            *GOLD.get(preset, []),
        )
    )
    out = capsys.readouterr().out
    assert code == EXIT_OK, out
    assert "config OK" in out and "20 rows" in out
    assert not (tmp_path / "out").exists()  # validate scores nothing


def test_every_preset_is_tested():
    from tests.models.test_rerankers import PRESETS as RERANKER_PRESETS  # validated there

    assert {p.stem for p in CONFIGS.glob("*.yaml")} == set(PRESETS) | set(RERANKER_PRESETS)


@pytest.mark.slow
@pytest.mark.canary
def test_nli_preset_labels_with_the_models_names_in_its_order(ray_local, models, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "data").mkdir()
    pq.write_table(
        pa.table(
            {
                "pair_id": [1, 2],
                "premise": [
                    "A man is eating pizza",
                    "A black race car starts up in front of a crowd of people.",
                ],
                "hypothesis": ["A man eats something", "A man is driving down a lonely road."],
            }
        ),
        tmp_path / "data" / "nli.parquet",
    )
    code = main(
        _args("score", "nli-labels", models[("deberta-v2", 3)], tmp_path / "data", tmp_path / "out")
    )
    assert code == EXIT_OK, capsys.readouterr().err
    out = read_output(tmp_path / "out").sort_by("pair_id")
    assert out.column_names == [
        "pair_id",
        *(f"score_{x}" for x in NLI_LABELS),
        "label",
        "truncated",
    ]
    assert set(out.column("label").to_pylist()) <= set(NLI_LABELS)


@pytest.fixture()
def sample(models, tmp_path):
    write_pairs(tmp_path / "data", rows=20)
    return tmp_path / "data", tmp_path / "out"


@pytest.mark.parametrize("command", ["validate", "score"])
@pytest.mark.parametrize(
    ("override", "code", "message"),
    [
        ("model.activaton=sigmoid", EXIT_CONFIG, "model.activaton: unknown key"),
        ("runtime.replicas=many", EXIT_CONFIG, "runtime.replicas: Input should be a valid integer"),
        ("input.text_b=passge", EXIT_INPUT, "column 'passge' not found"),
        ("model.labels=[a, b]", EXIT_CONFIG, "model.labels has 2 names but model"),
        ("task=score", EXIT_CONFIG, "task score needs a single-output model"),
    ],
)
def test_bad_configs_are_refused(command, override, code, message, models, sample, capsys):
    data, out = sample
    args = _args(
        command,
        "nli-labels",
        models[("deberta-v2", 3)],
        data,
        out,
        "--set",
        "input.text_a=query",
        "--set",
        "input.text_b=passage",
        "--set",
        override,
    )
    assert main(args) == code
    err = capsys.readouterr().err
    assert message in err
    if "column" in message:
        assert "pairs-00000.parquet" in err  # names the file
    assert not out.exists()


def test_output_inside_input_is_refused(models, sample, capsys):
    data, _ = sample
    code = main(_args("validate", "msmarco-rerank", models[("bert", 1)], data, data / "scored"))
    assert code == EXIT_CONFIG
    assert "is inside input.path" in capsys.readouterr().err


def test_secrets_never_printed(models, sample, capsys, caplog):
    caplog.set_level(logging.INFO)
    data, out = sample
    secret = "wJalrXUtnFEMI-K7MDENG-never-print"
    code = main(
        _args(
            "validate",
            "msmarco-rerank",
            models[("bert", 1)],
            data,
            out,
            "--set",
            f"input.storage.secret={secret}",
            "--set",
            "output.storage.key=AKIAEXAMPLE",
        )
    )
    captured = capsys.readouterr()
    assert code == EXIT_OK
    logged = captured.out + captured.err + caplog.text
    assert "**********" in logged  # the config was logged, masked
    assert secret not in logged and "AKIAEXAMPLE" not in logged


def test_overrides_are_parsed_as_yaml(tmp_path):
    cfg = load_config(
        CONFIGS / "msmarco-rerank.yaml",
        ["runtime.replicas=4", "rerank.top_k=10", "input.keep=[qid]", "model.revision=null"],
    )
    assert cfg.runtime.replicas == 4 and cfg.rerank.top_k == 10 and cfg.input.keep == ["qid"]


def test_schema_documents_every_field(capsys):
    assert main(["schema"]) == EXIT_OK
    schema = json.loads(capsys.readouterr().out)
    assert schema == JobConfig.model_json_schema()
    for name, definition in schema["$defs"].items():
        for field, spec in definition["properties"].items():
            assert spec.get("description"), f"{name}.{field} has no description"


def test_docs_config_reference_is_current():
    from crossenc.config import config_reference

    page = (CONFIGS.parent / "docs" / "reference" / "config.md").read_text()
    start = page.index("<!-- config-reference:start -->\n") + len(
        "<!-- config-reference:start -->\n"
    )
    end = page.index("\n<!-- config-reference:end -->")
    assert page[start:end] == config_reference(), (
        "regenerate: .venv/bin/python scripts/regen_config_reference.py"
    )
