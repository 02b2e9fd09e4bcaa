"""Input, model and output on S3, through moto's server on 127.0.0.1 and s3fs (real HTTP)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import s3fs

from crossenc.config import ModelConfig
from crossenc.engine.scoring import LocalScorer
from crossenc.job.run_job import run_job
from crossenc.storage import resolve
from crossenc.testing import write_pairs
from crossenc.testing.faultproxy import FaultProxy
from tests.helpers import job_config

SECRET = "s3cr3t-DO-NOT-PRINT-4242"


@pytest.fixture()
def s3(s3_server):
    fs = s3fs.S3FileSystem(key="testing", secret=SECRET, endpoint_url=s3_server)
    fs.mkdir("crossenc-test")
    yield fs
    fs.rm("crossenc-test", recursive=True)


@pytest.mark.slow
@pytest.mark.canary
def test_job_reads_model_and_pairs_from_s3_and_writes_back(
    ray_local, models, pairs_dir, s3, s3_server, tmp_path, capsys
):
    s3.put(str(pairs_dir) + "/", "crossenc-test/pairs/", recursive=True)
    s3.put(str(models[("bert", 1)]) + "/", "crossenc-test/models/bert/", recursive=True)
    storage = {"endpoint_url": s3_server, "key": "testing", "secret": SECRET}
    cfg = job_config(
        "s3://crossenc-test/pairs/",
        "s3://crossenc-test/scored/",
        "s3://crossenc-test/models/bert",
        task="rerank",
        input={"storage": storage},
        output={"storage": storage},
        model={"storage": storage, "backend": "torch"},  # the default backend, from S3
        runtime={"cache_dir": str(tmp_path / "cache")},
    )
    result = run_job(cfg)
    assert result.rows_written == result.rows_read == 300

    # The model was copied once to the node's cache, and loads from there.
    cached = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert len(cached) == 1 and (cached[0] / "model.safetensors").exists()

    assert s3.exists("crossenc-test/scored/_SUCCESS")
    manifest = json.loads(s3.cat("crossenc-test/scored/_manifest.json"))
    assert not s3.exists("crossenc-test/scored/_temporary")
    out = pads.dataset(
        "crossenc-test/scored/",
        filesystem=resolve(cfg.output.path, cfg.output.storage).arrow_fs,
        format="parquet",
    ).to_table()
    assert out.num_rows == 300 == sum(f["rows"] for f in manifest["files"])
    inp = pq.read_table(str(pairs_dir))
    want = LocalScorer(ModelConfig(name=str(models[("bert", 1)]), dtype="float32")).predict(
        list(zip(inp.column("query").to_pylist(), inp.column("passage").to_pylist(), strict=True))
    )
    got = dict(zip(out.column("doc_id").to_pylist(), out.column("score").to_pylist(), strict=True))
    np.testing.assert_allclose([got[d] for d in inp.column("doc_id").to_pylist()], want, atol=1e-5)
    # The secret key is in no manifest and nothing printed.
    assert SECRET not in json.dumps(manifest)
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err
    session = Path(ray_local._private.worker._global_node.get_session_dir_path())
    logs = [p for p in (session / "logs").rglob("*") if p.is_file()]
    assert logs, "no Ray logs found to check"
    assert not [p for p in logs if SECRET.encode() in p.read_bytes()]


@pytest.mark.slow
def test_job_through_a_store_that_fails_now_and_then(ray_local, models, s3_server, tmp_path):
    """5% of requests answered 503 SlowDown / 500, or cut off mid-body after the server acted
    (a proxy on loopback in front of moto): the job still commits every row exactly once, and
    the summary counts the retried requests."""
    write_pairs(tmp_path / "in", rows=240, files=12, seed=11)
    direct = s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=s3_server)
    bucket = f"faulty-{uuid.uuid4().hex[:8]}"
    direct.mkdir(bucket)
    direct.put(str(tmp_path / "in") + "/", f"{bucket}/in/", recursive=True)
    with FaultProxy(s3_server, fault_rate=0.0, seed=5) as proxy:
        storage = {"endpoint_url": proxy.url, "key": "testing", "secret": "testing"}
        cfg = job_config(
            f"s3://{bucket}/in/",
            f"s3://{bucket}/out/",
            models[("bert", 1)],
            input={"keep": ["pair_id"], "storage": storage},
            output={"storage": storage, "files": {"max_rows": 30}},
            runtime={"block_rows": 20},
        )
        proxy.fault_rate = 0.05
        try:
            result = run_job(cfg)
        finally:
            proxy.fault_rate = 0.0
        faults = proxy.total_faults
    try:
        assert result.rows_written == 240
        assert faults > 0, "the proxy injected no fault"
        retried = result.summary["store"]["retried_requests"]
        assert 1 <= retried <= faults
        manifest = json.loads(direct.cat(f"{bucket}/out/_manifest.json"))
        got = []
        for f in manifest["files"]:
            got += pq.read_table(f"{bucket}/out/{f['path']}", filesystem=direct)[
                "pair_id"
            ].to_pylist()
        assert sorted(got) == list(range(240))  # every row once, through the manifest
        listed = pads.dataset(f"{bucket}/out/", filesystem=direct, format="parquet").to_table()
        assert sorted(listed["pair_id"].to_pylist()) == list(range(240))  # and in a listing
        assert not direct.exists(f"{bucket}/out/_temporary")
    finally:
        direct.rm(bucket, recursive=True)


def test_footers_on_s3_one_ranged_read_each(s3_server):
    """inspect reads each footer with one ranged GET of the file's end (sizes from the
    listing); a footer longer than that read is fetched whole; bad files come back as errors."""
    import io

    import pyarrow as pa

    from crossenc.config import StorageConfig
    from crossenc.inputs.plan import TAIL, read_footers
    from crossenc.storage import list_parquet_files

    with FaultProxy(s3_server) as proxy:
        storage = StorageConfig(endpoint_url=proxy.url, key="testing", secret="testing")
        bucket = f"footers-{uuid.uuid4().hex[:8]}"
        loc = resolve(f"s3://{bucket}/in", storage)
        loc.fs.mkdir(bucket)
        small, wide = io.BytesIO(), io.BytesIO()
        pq.write_table(pa.table({"query": ["q"] * 4, "passage": ["p"] * 4}), small)
        pq.write_table(pa.table({f"column_{i}": [1] for i in range(3000)}), wide)
        assert int.from_bytes(wide.getvalue()[-8:-4], "little") > TAIL
        blobs = {f"{bucket}/in/{i:03d}.parquet": small.getvalue() for i in range(40)}
        blobs |= {
            f"{bucket}/in/wide.parquet": wide.getvalue(),
            f"{bucket}/in/corrupt.parquet": b"PAR1 not parquet PAR1",
            f"{bucket}/in/empty.parquet": b"",
        }
        loc.fs.pipe(blobs)
        proxy.reset_counts()
        footers = read_footers(loc, list_parquet_files(loc))
        gets = proxy.requests_by_method().get("GET", 0)
    direct = s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=s3_server)
    try:
        assert len(footers) == 43
        assert footers[f"{bucket}/in/000.parquet"].num_rows == 4
        assert footers[f"{bucket}/in/wide.parquet"].num_columns == 3000
        assert isinstance(footers[f"{bucket}/in/corrupt.parquet"], pa.ArrowInvalid)
        assert isinstance(footers[f"{bucket}/in/empty.parquet"], pa.ArrowInvalid)
        assert gets <= 42 + 1 + 3  # one read per non-empty file, one more for wide, listings
    finally:
        direct.rm(bucket, recursive=True)
