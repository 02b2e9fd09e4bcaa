"""output.incremental checks what it reuses: a tokenizer edit is another scoring key, and scores
stored under other package versions (the manifest's ``stack``) are reused only where a sample
scored again agrees with them; the manifest and Delta / Iceberg commits record the stack."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from crossenc.cli import EXIT_DRIFT, EXIT_OK, exit_code
from crossenc.job import run_job as pipeline
from crossenc.job.run_job import run_job
from crossenc.job.verify import FLOAT32_TOLERANCE, HALF_TOLERANCE, tolerance
from crossenc.models import load as model_module
from crossenc.models.describe import describe_model, model_fingerprint
from crossenc.models.load import load_tokenizer
from crossenc.output.commit import read_manifest
from crossenc.output.committers import committer_for
from crossenc.testing import build_tiny_model, write_pairs
from crossenc.versions import stack_versions
from tests.helpers import JOB_BACKEND, job_config, read_output, table_output

PAIRS = 60  # night 1; night 2: the same pairs and 12 new ones


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny BERT for the module (copied by the tests that edit it)."""
    return build_tiny_model(tmp_path_factory.mktemp("verify-model") / "bert", "bert", 1, seed=3)


@pytest.fixture(scope="module")
def nights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Night 1 (60 pairs, 2 files); night 2: night 1's pairs and 12 new ones, in 1 file."""
    root = tmp_path_factory.mktemp("verify-pairs")
    write_pairs(root / "night1", rows=PAIRS, files=2, seed=4)
    write_pairs(root / "new", rows=12, files=1, seed=9)
    night1 = pq.read_table(root / "night1")
    new = pq.read_table(root / "new").cast(night1.schema)
    new = new.set_column(0, "pair_id", pc.add(new.column("pair_id"), 1000))
    (root / "night2").mkdir()
    pq.write_table(pa.concat_tables([night1, new]), root / "night2" / "p.parquet")
    return {k: root / k for k in ("night1", "night2")}


def _config(nights, night: str, out: Path | str, model: Path, drift=None, **output):
    return job_config(
        nights[night],
        out,
        model,
        input={"keep": ["pair_id"]},
        output={"path": str(out), "incremental": True, "drift": drift or {}, **output},
    )


def _upgraded(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Make this process's runs record (and compare) another torch than the installed one
    (the tests' jobs run on onnx, whose stack holds torch, the exporter, and onnxruntime)."""
    stack = {**stack_versions(JOB_BACKEND), "torch": "99.0.0"}
    monkeypatch.setattr(pipeline, "stack_versions", lambda backend="torch": dict(stack))
    return stack


# -- the scoring key covers the token ids -------------------------------------------------------


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _stop_lowercasing(folder: Path) -> None:
    """Turn the BERT tokenizer's lowercasing off, in tokenizer.json and in tokenizer_config.json
    (whose do_lower_case transformers applies over the former)."""
    _edit_json(folder / "tokenizer.json", lambda t: t["normalizer"].update(lowercase=False))
    _edit_json(folder / "tokenizer_config.json", lambda c: c.update(do_lower_case=False))


@pytest.mark.parametrize(
    ("what", "changes"),
    [
        ("lowercasing", True),
        ("special token", True),
        ("chat template", True),
        ("prompts", True),
        ("st version", False),  # config_sentence_transformers.json's save versions: no
    ],
)
def test_tokenizer_files_are_in_the_fingerprint(tmp_path, model, what, changes):
    folder = shutil.copytree(model, tmp_path / "m")
    cfg = job_config("/tmp/i", "/tmp/o", folder)
    st_config = folder / "config_sentence_transformers.json"
    st_config.write_text(json.dumps({"prompts": {}, "__version__": {"sentence_transformers": "5"}}))
    before = model_fingerprint(cfg.model, describe_model(cfg.model))
    if what == "lowercasing":
        _stop_lowercasing(folder)
    elif what == "special token":
        (folder / "special_tokens_map.json").write_text(json.dumps({"cls_token": "[SEP]"}))
    elif what == "chat template":
        (folder / "chat_template.jinja").write_text("{{ messages }}")
    elif what == "prompts":
        _edit_json(st_config, lambda c: c.update(prompts={"query": "q: "}))
    else:
        _edit_json(st_config, lambda c: c.update(__version__={"sentence_transformers": "6"}))
    model_module._load_tokenizer.cache_clear()
    after = model_fingerprint(cfg.model, describe_model(cfg.model))
    assert after["weights_sha256"] == before["weights_sha256"]
    assert (after["tokenizer_sha256"] != before["tokenizer_sha256"]) is changes
    assert (cfg.scoring_key(after) != cfg.scoring_key(before)) is changes
    assert "tokenizer.json" in after["tokenizer_files"]


@pytest.mark.slow
def test_a_tokenizer_edit_invalidates_reuse(tmp_path, nights, model, ray_local, caplog):
    """The lowercasing of tokenizer.json flipped in place: night 2 reuses no score."""
    folder = shutil.copytree(model, tmp_path / "m")
    out = tmp_path / "out"
    run_job(_config(nights, "night1", out, folder))
    cfg = _config(nights, "night2", out, folder, mode="overwrite")
    text = "Berlin Population"
    ids_before = load_tokenizer(cfg.model, str(folder))(text)["input_ids"]
    _stop_lowercasing(folder)
    model_module._load_tokenizer.cache_clear()
    assert load_tokenizer(cfg.model, str(folder))(text)["input_ids"] != ids_before
    with caplog.at_level(logging.WARNING, logger="crossenc"):
        second = run_job(cfg)
    assert second.rows_reused == 0 and second.summary["rows"]["new"] == PAIRS + 12
    assert "another scoring key" in caplog.text
    assert "reuse" not in second.summary  # another key: nothing matched, nothing to check


# -- the stack: recorded, and checked before reuse ---------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["delta-local", "iceberg-local"])
def test_tables_record_the_stack_and_a_new_one_is_verified(
    tmp_path, nights, model, kind, ray_local, monkeypatch, caplog
):
    """Night 1 on the installed stack; night 2 on "another torch" whose scores are the same:
    a sample of 25 is scored again, agrees, and the scores are reused."""
    with table_output(kind, tmp_path, "") as out:
        first = run_job(_config(nights, "night1", out["path"], model, **out))
        committer = committer_for(_config(nights, "night1", out["path"], model, **out).output)
        assert committer.runs()[-1].manifest["stack"] == stack_versions(JOB_BACKEND)
        assert "verify" not in first.summary["phases"]  # nothing earlier: no check
        stack = _upgraded(monkeypatch)
        out["partition_value"] = {"dt": "d2"}
        cfg = _config(nights, "night2", out["path"], model, verify_sample=25, **out)
        with caplog.at_level(logging.INFO, logger="crossenc.job"):
            second = run_job(cfg)
        reuse = second.summary["reuse"]
        assert second.rows_reused == PAIRS and second.summary["rows"]["new"] == 12
        assert reuse["verified"] and reuse["decision"] == "reused" and reuse["sample"] == 25
        assert reuse["tolerance"] == {"max": 1e-5, "mean": 1e-5}
        assert reuse["mean_abs_diff"] <= reuse["max_abs_diff"] <= 1e-5
        assert "torch " in reuse["reason"] and "-> 99.0.0" in reuse["reason"]
        assert "scores made under another stack" in caplog.text
        assert second.summary["phases"]["verify"] > 0
        assert committer.runs()[-1].manifest["stack"] == stack
        assert exit_code(cfg, second) == EXIT_OK


def _tamper(out: Path, shift: float) -> None:
    """Add ``shift`` to every stored score of the run committed at ``out``."""
    manifest = read_manifest(job_config("/tmp/i", out, "/tmp/m").output)
    assert manifest is not None
    for f in manifest["files"]:
        path = out / f["path"]
        table = pq.read_table(path)
        score = table.schema.get_field_index("score")
        table = table.set_column(
            score, "score", pc.add(table["score"], pa.scalar(shift, pa.float32()))
        )
        pq.write_table(table, path)


@pytest.mark.slow
@pytest.mark.parametrize("sample", [1000, 0])
def test_drifted_stored_scores_are_not_reused(
    tmp_path, nights, model, sample, ray_local, monkeypatch, caplog, capsys
):
    """Night 1's stored scores moved by 0.05 (as a new stack would move them): night 2 checks,
    finds them apart, scores every pair, and says so in the log, the summary and the exit code;
    with output.verify_sample 0 it reuses them unchecked, and says that."""
    out = tmp_path / "out"
    run_job(_config(nights, "night1", out, model))
    night1 = read_output(out).sort_by("pair_id")
    _tamper(out, 0.05)
    _upgraded(monkeypatch)
    cfg = _config(nights, "night2", out, model, mode="overwrite", verify_sample=sample)
    with caplog.at_level(logging.WARNING, logger="crossenc.job"):
        second = run_job(cfg)
    reuse = second.summary["reuse"]
    night2 = read_output(out).sort_by("pair_id")
    old = pc.is_in(night2["pair_id"], night1["pair_id"])
    stored = night1["score"].to_numpy()
    if not sample:
        assert reuse["decision"] == "reused" and not reuse["verified"]
        assert "not checked (output.verify_sample 0)" in reuse["reason"]
        assert second.rows_reused == PAIRS
        np.testing.assert_allclose(night2.filter(old)["score"].to_numpy(), stored + 0.05)
        assert exit_code(cfg, second) == EXIT_OK
        return
    assert reuse["verified"] and reuse["decision"] == "rescored"
    assert reuse["sample"] == PAIRS  # fewer reused pairs than the sample: all of them
    assert reuse["max_abs_diff"] == pytest.approx(0.05, abs=1e-5)
    assert reuse["mean_abs_diff"] == pytest.approx(0.05, abs=1e-5)
    assert "no score is reused, every pair is scored" in reuse["reason"]
    assert "no score is reused" in caplog.text
    assert second.rows_reused == 0 and second.summary["rows"]["new"] == PAIRS + 12
    # the committed scores are the model's, not the tampered ones
    np.testing.assert_allclose(night2.filter(old)["score"].to_numpy(), stored, atol=1e-5)
    capsys.readouterr()
    assert exit_code(cfg, second) == EXIT_DRIFT
    assert "crossenc: drift: reuse: " in capsys.readouterr().err
    warn = _config(nights, "night2", out, model, drift={"on_drift": "warn"})
    assert exit_code(warn, second) == EXIT_OK


@pytest.mark.slow
def test_a_run_with_no_stack_recorded_is_checked(tmp_path, nights, model, ray_local):
    """An earlier run from before stacks were recorded counts as another stack."""
    out = tmp_path / "out"
    run_job(_config(nights, "night1", out, model))
    for path in [out / "_manifest.json", *sorted((out / "_commits").glob("*.json"))]:
        _edit_json(path, lambda m: m.pop("stack"))
    second = run_job(_config(nights, "night2", out, model, mode="overwrite", verify_sample=10))
    reuse = second.summary["reuse"]
    assert "recorded no stack" in reuse["reason"] and reuse["sample"] == 10
    assert reuse["decision"] == "reused" and second.rows_reused == PAIRS


def test_tolerance_follows_the_dtype(nights, model):
    def tol(dtype: str, used: str, **runtime) -> tuple[float, float]:
        cfg = job_config("/tmp/i", "/tmp/o", model, model={"dtype": dtype}, runtime=runtime)
        return tolerance(cfg, used)

    assert tol("float32", "float32") == FLOAT32_TOLERANCE
    assert tol("bfloat16", "bfloat16") == tol("float16", "float16") == HALF_TOLERANCE
    assert tol("auto", "float32") == FLOAT32_TOLERANCE  # a CPU without bf16 units
    assert tol("auto", "bfloat16") == HALF_TOLERANCE
    assert tol("auto", "float32", gpus_per_replica=1) == HALF_TOLERANCE  # GPUs pick 16 bits
