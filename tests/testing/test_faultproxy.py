"""FaultProxy: a fault-injecting reverse proxy in front of moto's S3 server, driven by s3fs.

Besides checking the proxy itself, these tests pin down which injected faults the client stack
(s3fs -> aiobotocore -> aiohttp) retries, and which layer does it:

* 503 SlowDown / 500 InternalError: botocore's retry handler (``config_kwargs["retries"]``).
  s3fs's own retry loop (``fs.retries``, a class attribute, default 5) retries only errors whose
  text matches "SlowDown"/"reduce your request rate", so not InternalError, and not a HEAD's
  bodiless 503.
* A truncated body of an operation botocore parses (ListObjectsV2, DeleteObjects,
  Create/CompleteMultipartUpload): aiohttp's ClientPayloadError becomes botocore's
  ConnectionClosedError, retried by botocore and also by s3fs (an HTTPClientError).
* A truncated GetObject body: botocore hands the stream to s3fs before the body is read, so
  botocore never retries it; s3fs's ``_error_wrapper`` around its read does (``fs.retries``
  attempts). With ``fs.retries = 1`` it surfaces as ``aiohttp.ClientPayloadError``.
* A connection closed with no response at all (a "drop" of a bodiless response, or
  ``drop_mode="before"``): aiohttp itself resends idempotent methods (GET, HEAD, PUT, DELETE)
  once; POSTs rely on botocore / s3fs.
"""

from __future__ import annotations

import asyncio
import http.client
import socket
import uuid

import aiohttp
import botocore.exceptions
import pytest
import s3fs
from fsspec.asyn import sync

from crossenc.testing.faultproxy import FaultProxy, error_body

KEY, SECRET = "testing", "testing"
RETRIES = {"retries": {"max_attempts": 10, "mode": "standard"}}  # 10 retries, 11 attempts
NO_RETRIES = {"retries": {"total_max_attempts": 1, "mode": "standard"}}
MIB = 2**20
# moto checks no SigV4 signature, but wants an Authorization header to name the account.
AUTH = {
    "Authorization": "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, "
    "SignedHeaders=host, Signature=00"
}


def make_fs(url: str, config: dict | None = None, s3fs_retries: int | None = None):
    """A fresh (uncached) s3fs filesystem on ``url``."""
    fs = s3fs.S3FileSystem(
        key=KEY,
        secret=SECRET,
        endpoint_url=url,
        config_kwargs=config or {},
        skip_instance_cache=True,
    )
    if s3fs_retries is not None:
        fs.retries = s3fs_retries  # not a constructor argument: it would reach AioSession
    return fs


@pytest.fixture()
def proxy(s3_server):
    with FaultProxy(s3_server, seed=1234) as p:
        yield p


@pytest.fixture()
def bucket(s3_server):
    """A fresh bucket name; the bucket (if made) is removed directly on moto at the end."""
    name = f"fp-{uuid.uuid4().hex[:8]}"
    yield name
    direct = make_fs(s3_server)
    if direct.exists(name):
        direct.rm(name, recursive=True)


@pytest.fixture()
def direct(s3_server):
    """s3fs straight on moto, bypassing the proxy (to check what the server holds)."""
    return make_fs(s3_server)


@pytest.fixture()
def fast_backoff(monkeypatch):
    """botocore's standard-mode backoff delays / 10: the same retry decisions, less waiting."""
    from botocore.retries.standard import ExponentialBackoff

    delay = ExponentialBackoff.delay_amount
    monkeypatch.setattr(ExponentialBackoff, "delay_amount", lambda self, ctx: delay(self, ctx) / 10)


def kinds_of(proxy: FaultProxy, method: str) -> list[str | None]:
    return [k for m, _, k in proxy.history if m == method]


def test_forwards_s3_traffic_unchanged_at_rate_zero(proxy, bucket, direct):
    fs = make_fs(proxy.url)
    fs.mkdir(bucket)
    fs.pipe_file(f"{bucket}/a.txt", b"hello")
    fs.put_file(__file__, f"{bucket}/dir/me.py")
    assert fs.cat_file(f"{bucket}/a.txt") == b"hello"
    assert fs.info(f"{bucket}/a.txt")["size"] == 5  # HEAD keeps the object's Content-Length
    assert fs.cat_file(f"{bucket}/a.txt", start=1, end=3) == b"el"  # Range
    assert sorted(fs.ls(bucket, refresh=True)) == [f"{bucket}/a.txt", f"{bucket}/dir"]
    assert fs.find(bucket) == [f"{bucket}/a.txt", f"{bucket}/dir/me.py"]

    # Multipart uploads: 12 MiB in 5 MiB parts, concurrent (pipe_file) and streamed (open).
    data = bytes(range(256)) * (12 * MIB // 256)
    fs.pipe_file(f"{bucket}/big", data, chunksize=5 * MIB)
    with fs.open(f"{bucket}/big2", "wb", block_size=5 * MIB) as f:
        for i in range(12):
            f.write(data[i * MIB : (i + 1) * MIB])
    assert fs.cat_file(f"{bucket}/big") == data
    assert direct.cat_file(f"{bucket}/big2") == data
    parts = [p for m, p, _ in proxy.history if m == "PUT" and "partNumber=" in p]
    assert len(parts) == 6  # 5 + 5 + 2 MiB, twice
    assert sum(1 for m, p, _ in proxy.history if m == "POST" and "uploads" in p) == 2

    fs.rm_file(f"{bucket}/a.txt")
    fs.rm([f"{bucket}/big", f"{bucket}/big2"])  # DeleteObjects
    assert not direct.exists(f"{bucket}/a.txt") and not direct.exists(f"{bucket}/big")

    by_method = proxy.requests_by_method()
    assert proxy.requests == proxy.forwarded == len(proxy.history) == sum(by_method.values())
    assert set(by_method) == {"HEAD", "GET", "PUT", "POST", "DELETE"}
    assert proxy.faults == {"slowdown": 0, "internal": 0, "drop": 0} and proxy.total_faults == 0
    proxy.reset_counts()
    assert proxy.requests == proxy.forwarded == 0 and proxy.requests_by_method() == {}


def test_random_faults_are_retried(proxy, bucket, direct, fast_backoff):
    fs = make_fs(proxy.url, RETRIES)
    fs.mkdir(bucket)
    proxy.fault_rate = 0.3
    values = {f"{bucket}/k{i:02d}": f"value {i} ".encode() * (i + 1) for i in range(50)}
    fs.pipe(values)  # 50 concurrent PUTs
    fs.invalidate_cache()
    assert fs.cat(list(values)) == values  # 50 concurrent HEAD + GET
    assert all(proxy.faults[k] > 0 for k in ("slowdown", "internal", "drop")), proxy.faults
    assert proxy.requests >= 2 * len(values) + proxy.total_faults  # each fault: one resend
    assert proxy.forwarded == proxy.requests - proxy.faults["slowdown"] - proxy.faults["internal"]

    # Conditional writes (PUT If-None-Match: *). A "drop" lets moto create the object and loses
    # the answer; the resent PUT gets 412, which s3fs raises as FileExistsError. Either way the
    # object holds our bytes.
    creates = {f"{bucket}/create{i:02d}": b"created %d" % i for i in range(16)}

    async def create_all() -> list:
        jobs = [fs._pipe_file(path, data, mode="create") for path, data in creates.items()]
        return await asyncio.gather(*jobs, return_exceptions=True)

    for path, outcome in zip(creates, sync(fs.loop, create_all), strict=True):
        if isinstance(outcome, BaseException):  # FileExistsError, only after a dropped answer
            assert isinstance(outcome, FileExistsError), outcome
            assert (f"/{path}", "drop") in [(p, k) for m, p, k in proxy.history if m == "PUT"]
    proxy.fault_rate = 0.0
    assert direct.cat(list(creates)) == creates
    assert fs.cat(list(values)) == values


def test_conditional_put_and_drop_modes(proxy, bucket, direct, fast_backoff):
    fs = make_fs(proxy.url, RETRIES)
    fs.mkdir(bucket)
    # "body" drop: forwarded (created), answer lost, the resent PUT gets 412 Precondition Failed.
    proxy.schedule("drop", method="PUT", path_contains="/one")
    with pytest.raises(FileExistsError):
        fs.pipe_file(f"{bucket}/one", b"1", mode="create")
    assert direct.cat_file(f"{bucket}/one") == b"1"
    assert kinds_of(proxy, "PUT")[-2:] == ["drop", None]
    # "before" drop: the server never sees the first PUT; the resent one creates the object.
    proxy.drop_mode = "before"
    proxy.reset_counts()
    proxy.schedule("drop", method="PUT", path_contains="/two")
    fs.pipe_file(f"{bucket}/two", b"2", mode="create")
    assert direct.cat_file(f"{bucket}/two") == b"2"
    assert kinds_of(proxy, "PUT") == ["drop", None] and proxy.forwarded == 1
    # The condition still holds for real: a second create of the same key fails.
    with pytest.raises(FileExistsError):
        fs.pipe_file(f"{bucket}/two", b"again", mode="create")


def test_lost_answer_to_delete_bucket_surfaces_as_not_found(proxy, bucket, direct):
    fs = make_fs(proxy.url, RETRIES)
    fs.mkdir(bucket)
    # moto deletes the bucket, the 204 is lost, the resent DELETE gets 404 NoSuchBucket.
    proxy.schedule("drop", method="DELETE")
    with pytest.raises(FileNotFoundError):
        fs.rmdir(bucket)
    assert not direct.exists(bucket)
    # With drop_mode="before" the first DELETE never reaches moto: the resent one succeeds.
    fs.mkdir(bucket)
    proxy.drop_mode = "before"
    proxy.schedule("drop", method="DELETE")
    fs.rmdir(bucket)
    assert not direct.exists(bucket)
    assert kinds_of(proxy, "DELETE") == ["drop", None, "drop", None]


def test_truncated_object_body_is_retried_by_s3fs_only(proxy, bucket, fast_backoff):
    fs = make_fs(proxy.url, RETRIES)
    fs.mkdir(bucket)
    fs.pipe_file(f"{bucket}/obj", b"x" * 1000)
    proxy.schedule("drop", method="GET", path_contains="/obj")
    assert fs.cat_file(f"{bucket}/obj") == b"x" * 1000
    assert kinds_of(proxy, "GET")[-2:] == ["drop", None]
    # botocore's retries (10 here) do not cover a GetObject body: s3fs reads it after the call.
    fs.retries = 1
    proxy.schedule("drop", method="GET", path_contains="/obj")
    with pytest.raises(aiohttp.ClientPayloadError):
        fs.cat_file(f"{bucket}/obj")
    with pytest.raises(aiohttp.ClientPayloadError):
        proxy.schedule("drop", method="GET", path_contains="/obj")
        with fs.open(f"{bucket}/obj", "rb") as f:
            f.read()


@pytest.mark.parametrize("op", ["list", "delete_objects"])
@pytest.mark.parametrize(
    "config,s3fs_retries,ok",
    [(RETRIES, 1, True), (NO_RETRIES, 5, True), (NO_RETRIES, 1, False)],
    ids=["botocore-only", "s3fs-only", "no-retries"],
)
def test_truncated_xml_is_retried_by_botocore_or_s3fs(
    proxy, bucket, direct, fast_backoff, op, config, s3fs_retries, ok
):
    make_fs(proxy.url).mkdir(bucket)
    direct.pipe({f"{bucket}/a": b"a", f"{bucket}/b": b"b"})
    fs = make_fs(proxy.url, config, s3fs_retries)
    if op == "list":
        proxy.schedule("drop", method="GET", path_contains="list-type=2")
        call = lambda: fs.ls(bucket, refresh=True)  # noqa: E731
    else:
        proxy.schedule("drop", method="POST", path_contains="?delete")
        call = lambda: fs.rm([f"{bucket}/a", f"{bucket}/b"])  # noqa: E731
    if ok:
        result = call()
        if op == "list":
            assert sorted(result) == [f"{bucket}/a", f"{bucket}/b"]
        else:
            assert direct.ls(bucket, refresh=True) == []
    else:
        with pytest.raises(botocore.exceptions.ConnectionClosedError):
            call()
    assert proxy.faults["drop"] == 1


def test_hang_up_without_response_on_idempotent_requests_is_resent_by_aiohttp(proxy, bucket):
    fs = make_fs(proxy.url, NO_RETRIES, s3fs_retries=1)  # no botocore or s3fs retries at all
    fs.mkdir(bucket)
    fs.pipe_file(f"{bucket}/k", b"v")
    proxy.schedule("drop", method="PUT")  # a PutObject answer has no body: nothing is sent
    fs.pipe_file(f"{bucket}/k2", b"v2")
    proxy.schedule("drop", method="HEAD")
    assert fs.info(f"{bucket}/k2")["size"] == 2
    proxy.drop_mode = "before"
    proxy.schedule("drop", method="GET")
    assert fs.cat_file(f"{bucket}/k") == b"v"
    assert proxy.faults["drop"] == 3
    # A POST is not resent by aiohttp: without botocore / s3fs retries it fails.
    proxy.schedule("drop", method="POST")
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        fs.rm([f"{bucket}/k", f"{bucket}/k2"])


def test_raw_http_relay(proxy):
    name = f"fp-{uuid.uuid4().hex[:8]}"
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)

    def call(method: str, path: str, **kw) -> http.client.HTTPResponse:
        conn.request(method, path, headers={**AUTH, **kw.pop("headers", {})}, **kw)
        return conn.getresponse()

    # Keep-alive: all of these go over one connection.
    resp = call("PUT", f"/{name}")
    assert resp.status == 200 and resp.read() == b""
    sock = conn.sock
    body = [b"hello ", b"chunked ", b"world"]
    resp = call("PUT", f"/{name}/obj", body=iter(body), encode_chunked=True)
    assert resp.status == 200 and resp.read() == b""
    resp = call("HEAD", f"/{name}/obj")
    assert resp.status == 200 and resp.getheader("Content-Length") == "19"
    assert resp.read() == b""
    resp = call("GET", f"/{name}/obj?x=1")  # query strings pass through
    assert resp.getheader("Content-Length") == "19" and resp.read() == b"hello chunked world"
    resp = call("GET", f"/{name}/obj", headers={"Range": "bytes=6-12"})
    assert resp.status == 206 and resp.read() == b"chunked"

    for kind, status, code in [("slowdown", 503, "SlowDown"), ("internal", 500, "InternalError")]:
        proxy.schedule(kind)
        resp = call("GET", f"/{name}/obj")
        data = resp.read()
        assert resp.status == status and resp.getheader("Content-Type") == "application/xml"
        assert f"<Code>{code}</Code>".encode() in data
        assert int(resp.getheader("Content-Length")) == len(data)
        proxy.schedule(kind)
        resp = call("HEAD", f"/{name}/obj")
        assert resp.status == status and resp.read() == b""
    assert conn.sock is sock
    assert error_body("SlowDown", "Please reduce your request rate.") == (
        b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
    )

    # "drop": full Content-Length, half the body, then the connection is closed.
    proxy.schedule("drop")
    resp = call("GET", f"/{name}/obj")
    assert resp.status == 200 and resp.getheader("Content-Length") == "19"
    with pytest.raises(http.client.IncompleteRead) as info:
        resp.read()
    assert info.value.partial == b"hello chunked world"[:9]
    conn.close()
    proxy.schedule("drop")  # a bodiless answer: nothing at all
    with pytest.raises(http.client.RemoteDisconnected):
        call("HEAD", f"/{name}/obj")
    conn.close()
    forwarded = proxy.forwarded
    proxy.drop_mode = "before"
    proxy.schedule("drop")
    with pytest.raises(http.client.RemoteDisconnected):
        call("DELETE", f"/{name}/obj")
    conn.close()
    assert proxy.forwarded == forwarded  # never reached moto
    for path in (f"/{name}/obj", f"/{name}"):
        resp = call("DELETE", path)
        assert resp.status == 204 and resp.read() == b""
    conn.close()


def test_scheduling_filters_and_lifecycle(s3_server):
    with pytest.raises(ValueError):
        FaultProxy(s3_server, kinds=("boom",))
    with pytest.raises(ValueError):
        FaultProxy(s3_server, drop_mode="later")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        FaultProxy("ftp://example")

    p = FaultProxy(s3_server, fault_rate=1.0, kinds=("slowdown",), methods=("PUT",))
    with pytest.raises(RuntimeError):
        _ = p.url
    with p:
        assert p.url == f"http://127.0.0.1:{p.port}"
        conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
        for _ in range(3):
            conn.request("GET", "/", headers=AUTH)  # ListBuckets: not a PUT, never faulted
            assert conn.getresponse().read().count(b"ListAllMyBucketsResult") > 0
        conn.request("PUT", f"/fp-{uuid.uuid4().hex[:8]}", headers=AUTH)
        resp = conn.getresponse()
        assert resp.status == 503 and b"<Code>SlowDown</Code>" in resp.read()
        p.fault_rate = 0.0
        p.schedule("internal", count=2, method="GET", path_contains="/x")
        statuses = []
        for path in ["/", "/x", "/", "/x", "/x"]:
            conn.request("GET", path, headers=AUTH)
            resp = conn.getresponse()
            resp.read()
            statuses.append(resp.status)
        assert statuses[:4] == [200, 500, 200, 500] and statuses[4] != 500
        assert p.requests == 9 and p.faults == {"slowdown": 1, "internal": 2, "drop": 0}
        assert p.requests_by_method() == {"GET": 8, "PUT": 1}
        port = p.port
    # stop() closed the listening socket and hung up on the idle keep-alive connection.
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), 2):
        pass
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        conn.request("GET", "/", headers=AUTH)
        conn.getresponse()
    p.stop()  # idempotent
