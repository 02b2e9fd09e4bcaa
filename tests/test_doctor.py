"""crossenc doctor: versions, hardware, a real local Ray head, and a config's locations on moto."""

from __future__ import annotations

import contextlib
import json
import logging
import platform
import sys
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import s3fs
import yaml
from packaging.requirements import Requirement

from crossenc import doctor, versions
from crossenc.cli import EXIT_CONFIG, EXIT_ENVIRONMENT, EXIT_OK, EXIT_STORAGE, main
from crossenc.engine import torch_runner as torch_backend
from crossenc.testing import write_pairs
from crossenc.versions import KNOWN_BAD, canonical
from tests.conftest import free_port

SECRET = "testing"


@pytest.fixture(autouse=True)
def _no_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(logging.getLogger(), "handlers", [])


def doctor_run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, dict[str, Any]]:
    """``crossenc doctor ARGS``: exit code, the text report and the --json one."""
    code = main(["doctor", *args])
    text = capsys.readouterr().out
    assert main(["doctor", "--json", *args]) == code
    return code, text, json.loads(capsys.readouterr().out)


def line(text: str, name: str, section: str | None = None) -> str:
    """The report's one line for ``name`` (in ``section``, where given)."""
    found, current = [], ""
    for ln in text.splitlines():
        if ln and not ln.startswith(" "):
            current = ln
        elif ln.strip()[2:].startswith(f"{name}: ") and section in (None, current):
            found.append(ln.strip())
    assert len(found) == 1, text
    return found[0]


def test_versions_lists_every_direct_dependency_against_the_tested_set(capsys):
    code, text, report = doctor_run(capsys)
    required = {
        canonical(r.name)
        for r in map(Requirement, metadata.requires("crossenc") or [])
        if r.marker is None
    }
    assert required <= set(report["versions"]["packages"]), report["versions"]
    assert not {"pytest", "moto", "duckdb", "ruff"} & set(report["versions"]["packages"])
    assert report["versions"]["packages"]["onnx"]["extra"] == "onnx"  # installed here
    torch = report["versions"]["packages"]["torch"]
    assert torch["tested"] == "2.13.0" and torch["installed"].startswith("2.13.0")
    assert line(text, "torch", "versions") == f"✔ torch: {torch['installed']} (tested)"
    assert line(text, "onnx [onnx]").startswith("✔ onnx [onnx]: ")
    assert code == EXIT_OK and report["ok"] and "nothing here would stop a run" in text


def test_known_bad_out_of_range_and_missing_dependencies_are_crosses(capsys, monkeypatch):
    monkeypatch.setitem(KNOWN_BAD, "numpy", [(">=0", "a test's reason")])
    real = doctor.installed_version
    fake = {"tqdm": "4.0.0", "accelerate": None, "onnx": None}
    monkeypatch.setattr(doctor, "installed_version", lambda n: fake.get(n, real(n)))
    code, text, report = doctor_run(capsys)
    numpy = versions.tested_versions()["numpy"]
    assert line(text, "numpy") == (
        f"✘ numpy: {numpy} is known to break crossenc: a test's reason; "
        f"pip install numpy=={numpy} (the tested version)"
    )
    assert line(text, "tqdm").startswith("✘ tqdm: 4.0.0 is outside crossenc's range >=4.66; ")
    assert line(text, "accelerate").startswith("✘ accelerate: not installed (crossenc needs >=")
    assert "onnx [onnx]" not in text  # an extra not installed is left out, not a problem
    assert code == EXIT_ENVIRONMENT and not report["ok"] and report["exit_code"] == code
    assert "3 problem(s) (✘) would stop a run: exit 10" in text


def test_an_untested_version_in_range_is_a_tilde_and_exits_zero(capsys, monkeypatch):
    pins = {**versions.tested_versions(), "numpy": "2.0.0"}
    monkeypatch.setattr(doctor, "tested_versions", lambda: pins)
    code, text, report = doctor_run(capsys)
    installed = report["versions"]["packages"]["numpy"]["installed"]
    assert line(text, "numpy") == (
        f"~ numpy: {installed}, in range >=1.24, untested (tested: 2.0.0); "
        "pip install numpy==2.0.0 (the tested version)"
    )
    assert report["versions"]["packages"]["numpy"]["status"] == "untested"
    assert code == EXIT_OK


def test_hardware_names_the_cpus_matrix_units_and_the_dtype_auto_decision(capsys, monkeypatch):
    flags = set()
    for ln in Path("/proc/cpuinfo").read_text().splitlines():
        if ln.startswith("flags"):
            flags = set(ln.split(":", 1)[1].split())
            break
    _, text, report = doctor_run(capsys)
    hw = report["hardware"]
    assert hw["cpu_flags"] == {f: f in flags for f in doctor.MATRIX_UNITS}
    cpu = line(text, "cpu")
    named = cpu.split("matrix units: ", 1)[1].removesuffix(" (no AMX)").split(", ")
    expected_units = [w for f, w in doctor.MATRIX_UNITS.items() if f in flags] or ["none"]
    assert named == expected_units, cpu
    assert cpu.endswith(" (no AMX)") == ("amx_tile" not in flags), cpu
    # torch's AMX probe agrees with the kernel's flags, and dtype auto follows it
    assert hw["amx"] == ("amx_tile" in flags) == torch_backend.cpu_has_bf16_matmul()
    expected = "bfloat16" if hw["amx"] else "float32"
    assert hw["dtype_auto_cpu"] == expected
    assert line(text, "model.dtype auto on CPU").startswith(
        f"· model.dtype auto on CPU: {expected}"
    )
    # the decision is the run's own (pick_dtype), not a copy of it
    monkeypatch.setattr(torch_backend, "cpu_has_bf16_matmul", lambda: not hw["amx"])
    _, _, flipped = doctor_run(capsys)
    assert flipped["hardware"]["dtype_auto_cpu"] == ("float32" if hw["amx"] else "bfloat16")


def test_each_gpu_with_its_bf16_support_and_dtype_auto(capsys, monkeypatch):
    """A machine with two GPUs, one without bf16 (torch.cuda stands in for the hardware)."""
    import torch

    gpus = [
        SimpleNamespace(name="NVIDIA H100", major=9, minor=0, total_memory=80 * 2**30),
        SimpleNamespace(name="Tesla T4", major=7, minor=5, total_memory=16 * 2**30),
    ]
    current = [0]

    @contextlib.contextmanager
    def device(i: int) -> Iterator[None]:
        current[0] = i
        yield

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(gpus))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: gpus[i])
    monkeypatch.setattr(torch.cuda, "device", device)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *_, **__: current[0] == 0)
    _, text, report = doctor_run(capsys)
    assert line(text, "gpu 0") == (
        "✔ gpu 0: NVIDIA H100, compute 9.0, 80 GiB, bf16 yes: model.dtype auto -> bfloat16"
    )
    assert line(text, "gpu 1") == (
        "✔ gpu 1: Tesla T4, compute 7.5, 16 GiB, bf16 no: model.dtype auto -> float16"
    )
    assert [g["dtype_auto"] for g in report["hardware"]["gpus"]] == ["bfloat16", "float16"]


def test_a_torch_that_cannot_be_imported_is_a_cross(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    code, text, report = doctor_run(capsys)
    assert line(text, "torch", "hardware").startswith("✘ torch: cannot be imported (")
    assert code == EXIT_ENVIRONMENT and report["hardware"] is None


def test_cpu_info_reads_model_name_and_flags(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Intel Xeon Platinum 8480+\n"
        "flags\t\t: fpu avx512f avx512_bf16 amx_tile amx_bf16\n\nprocessor\t: 1\n"
    )
    assert doctor.cpu_info(str(cpuinfo)) == (
        "Intel Xeon Platinum 8480+",
        {"fpu", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"},
    )


def test_dashboard_url_of_each_ray_address_form():
    assert doctor.dashboard_url("http://head:8265/") == "http://head:8265"
    assert doctor.dashboard_url("https://ray.example.com") == "https://ray.example.com"
    assert doctor.dashboard_url("ray://head:10001") == "http://head:8265"
    assert doctor.dashboard_url("10.0.0.5:6379") == "http://10.0.0.5:8265"
    assert doctor.dashboard_url("auto") == "http://127.0.0.1:8265"


def test_unreachable_ray_address_is_a_cross_naming_it(capsys, monkeypatch):
    address = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("RAY_ADDRESS", address)
    code, text, report = doctor_run(capsys)
    got = line(text, "RAY_ADDRESS")
    assert got.startswith(f"✘ RAY_ADDRESS: {address}: cannot reach the Ray dashboard at ")
    assert got.endswith(
        "; set RAY_ADDRESS to the head's dashboard, http://<head>:8265, and check the network"
    )
    assert code == EXIT_ENVIRONMENT and report["cluster"]["error"]


def wait_for_a_node(url: str) -> None:
    """Until the head's node is registered (its dashboard answers a moment before)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, KeyError, ValueError):
            if doctor.cluster_facts(url)["nodes"]:
                return
        time.sleep(0.5)
    pytest.fail("the Ray head's node did not register")


@pytest.mark.slow
def test_cluster_versions_and_resources_against_a_real_head(
    ray_head, capsys, monkeypatch, tmp_path
):
    url, env = ray_head
    monkeypatch.setenv("RAY_ADDRESS", url)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "no-token"))
    code, text, report = doctor_run(capsys)  # the head asks for a token: none here
    assert line(text, "RAY_ADDRESS") == (
        f"✘ RAY_ADDRESS: {url}: the Ray dashboard at {url} answered HTTP 401 Unauthorized; "
        "set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the cluster's token "
        "(ray get-auth-token on the head)"
    )
    assert code == EXIT_ENVIRONMENT

    (tmp_path / "token").write_text(env["RAY_AUTH_TOKEN"] + "\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "token"))
    wait_for_a_node(url)
    code, text, report = doctor_run(capsys)
    cluster = report["cluster"]
    assert cluster["ray_version"] == metadata.version("ray")
    assert cluster["python_version"] == platform.python_version()
    assert (cluster["nodes"], cluster["cpus"], cluster["gpus"]) == (1, 2, 0)
    assert line(text, "ray", "cluster") == f"✔ ray: cluster {cluster['ray_version']}, client " + (
        metadata.version("ray")
    )
    assert line(text, "resources") == "· resources: 1 node(s), 2 CPUs, no GPUs"
    assert code == EXIT_OK

    # a client whose Ray and Python differ from the cluster's in major.minor
    real = doctor.installed_version
    monkeypatch.setattr(doctor, "installed_version", lambda n: "2.41.0" if n == "ray" else real(n))
    monkeypatch.setattr(doctor.platform, "python_version", lambda: "3.10.14")
    code, text, report = doctor_run(capsys)
    ray_version, py = cluster["ray_version"], cluster["python_version"]
    assert line(text, "ray", "cluster") == (
        f"✘ ray: cluster {ray_version}, client 2.41.0: they differ; install ray=={ray_version} "
        f"in the client (pip install 'ray[default]=={ray_version}'), or run the cluster on an "
        "image with ray==2.41.0"
    )
    minor = ".".join(py.split(".")[:2])
    assert line(text, "python", "cluster") == (
        f"✘ python: cluster {py}, client 3.10.14: they differ; use Python {minor} in the "
        "client, or run the cluster on an image with Python 3.10"
    )
    assert code == EXIT_ENVIRONMENT and report["versions"]["packages"]["ray"]["status"] == (
        "untested"
    )


@pytest.fixture()
def s3_job(s3_server: str, tmp_path: Path) -> Iterator[tuple[Path, s3fs.S3FileSystem]]:
    """A bucket holding 3 Parquet files of pairs and a model folder, and a config over them
    (input, output and model on the moto server)."""
    fs = s3fs.S3FileSystem(key=SECRET, secret=SECRET, endpoint_url=s3_server)
    fs.mkdir("doctor-test")
    write_pairs(tmp_path / "pairs", rows=30, files=3, seed=1)
    fs.put(str(tmp_path / "pairs") + "/", "doctor-test/pairs/", recursive=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        fs.pipe(f"doctor-test/model/{name}", b"{}")
    storage = {"endpoint_url": s3_server, "key": SECRET, "secret": SECRET}
    config = {
        "input": {"path": "s3://doctor-test/pairs/", "storage": storage},
        "model": {"name": "s3://doctor-test/model", "storage": storage},
        "output": {"path": "s3://doctor-test/scored/", "storage": storage},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    yield path, fs
    fs.rm("doctor-test", recursive=True)


def test_config_whose_locations_are_reachable(s3_job, capsys):
    config, fs = s3_job
    code, text, report = doctor_run(capsys, "--config", str(config))
    assert (
        line(text, "input.path")
        == "✔ input.path: s3://doctor-test/pairs/: 3 Parquet file(s), "
        + (text.split("3 Parquet file(s), ", 1)[1].splitlines()[0])
    )
    assert line(text, "output.path") == (
        "✔ output.path: s3://doctor-test/scored/: writable (checked without writing)"
    )
    assert line(text, "model.name").startswith("✔ model.name: s3://doctor-test/model: 3 file(s)")
    assert report["config"]["reachable"] == dict.fromkeys(
        ("input.path", "output.path", "model.name"), True
    )
    assert code == EXIT_OK
    assert sorted(p.rsplit("/", 1)[1] for p in fs.ls("doctor-test")) == ["model", "pairs"]


@pytest.mark.parametrize(
    ("sets", "env", "key", "code", "words"),
    [
        (
            ["input.path=s3://doctor-no-such-bucket/pairs/"],
            {},
            "input.path",
            EXIT_STORAGE,
            [
                "input.path s3://doctor-no-such-bucket/pairs/",
                "'doctor-no-such-bucket' does not exist",
                "fix input.path",
            ],
        ),
        (
            ["input.storage.endpoint_url=http://127.0.0.1:9"],
            {},
            "input.path",
            EXIT_STORAGE,
            [
                "cannot reach the object store at http://127.0.0.1:9",
                "check input.storage.endpoint_url",
            ],
        ),
        (
            ["model.name=nobody/not-a-model"],
            {"HF_HUB_OFFLINE": "1"},
            "model.name",
            EXIT_STORAGE,
            ["model.name nobody/not-a-model", "HF_HUB_OFFLINE is set"],
        ),
        (["model.dtype=float64"], {}, "config", EXIT_CONFIG, ["model.dtype", "job.yaml"]),
    ],
    ids=["bucket-missing", "endpoint-unreachable", "hub-offline", "invalid"],
)
def test_config_problem_is_a_cross_naming_what_to_change(
    s3_job, capsys, monkeypatch, sets, env, key, code, words
):
    config, _ = s3_job
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = ["--config", str(config), *(a for s in sets for a in ("--set", s))]
    got, text, report = doctor_run(capsys, *args)
    bad = line(text, key)
    assert bad.startswith(f"✘ {key}: "), text
    for word in words:
        assert word in bad, (word, bad)
    assert got == code == report["exit_code"] and not report["ok"]
    assert sum(ln.strip().startswith("✘") for ln in text.splitlines()) == 1, text
