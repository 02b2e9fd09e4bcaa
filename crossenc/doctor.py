"""``crossenc doctor``: what would stop a run on this machine, its cluster, or with a config.

Four sections, one line each fact: crossenc's direct dependencies against the tested set
(:mod:`crossenc.versions`); the torch build, GPUs and CPU matrix units behind ``model.dtype:
auto``; with ``RAY_ADDRESS``, the cluster's Ray and Python against this client's and what it
offers (read from its dashboard's HTTP API, so a client whose Ray differs still gets an
answer); with ``--config``, whether input, output and model can be reached with their storage
settings. ✔ fine, ~ untested or unusual but no obstacle, ✘ would stop a run (the line says
what to change), · a fact. torch is imported only here, Ray never.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from crossenc import __version__
from crossenc.errors import EXIT_CONFIG, EXIT_ENVIRONMENT, EXIT_INPUT, EXIT_OK, explain
from crossenc.versions import (
    canonical,
    installed_version,
    known_bad,
    same_release,
    tested_versions,
)

if TYPE_CHECKING:
    from crossenc.config import JobConfig, ModelConfig

OK, UNTESTED, BAD, INFO = "ok", "untested", "bad", "info"
MARKS = {OK: "✔", UNTESTED: "~", BAD: "✘", INFO: "·"}
EXTRAS = ("onnx", "tables")  # optional dependencies shown when installed
# /proc/cpuinfo flags of the matrix units model.dtype auto cares about, in words
MATRIX_UNITS = {
    "avx512f": "AVX-512",
    "avx512_bf16": "AVX512-BF16",
    "avx512_vnni": "AVX512-VNNI",
    "amx_tile": "AMX",
    "amx_bf16": "AMX-BF16",
    "amx_int8": "AMX-INT8",
}
DASHBOARD_PORT = 8265
TIMEOUT_S = 10.0
QUICK_ATTEMPTS = 2  # store requests' attempts in the config's checks


@dataclass(frozen=True)
class Check:
    """One line of the report: a fact and, where it is not fine, what to change."""

    section: str  # versions, hardware, cluster, config
    name: str
    status: str  # ok, untested, bad, info
    detail: str
    fix: str = ""
    code: int = EXIT_OK  # the exit code a bad line calls for

    def line(self) -> str:
        """The line as printed: mark, name, what was found, what to change."""
        text = f"{MARKS[self.status]} {self.name}: {self.detail}"
        return f"{text}; {self.fix}" if self.fix else text


@dataclass
class Report:
    """Every check, and the facts behind them (``--json``)."""

    checks: list[Check] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """0 without a ✘ line, else the first ✘ line's code."""
        return next((c.code for c in self.checks if c.status == BAD), EXIT_OK)

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data, with stable keys."""
        return {
            "ok": self.exit_code == EXIT_OK,
            "exit_code": self.exit_code,
            "checks": [asdict(c) for c in self.checks],
            **self.facts,
        }

    def text(self) -> str:
        """The report as printed: a header, the sections, the verdict."""
        head = f"crossenc {__version__}, Python {platform.python_version()}, {platform.platform()}"
        lines = [head]
        for section in ("versions", "hardware", "cluster", "config"):
            checks = [c for c in self.checks if c.section == section]
            if checks:
                lines += ["", section, *(f"  {c.line()}" for c in checks)]
        bad = sum(c.status == BAD for c in self.checks)
        lines.append("")
        lines.append(
            f"{bad} problem(s) (✘) would stop a run: exit {self.exit_code}"
            if bad
            else "nothing here would stop a run"
        )
        return "\n".join(lines)


# --- versions -------------------------------------------------------------------------------


def direct_requirements() -> list[tuple[Requirement, str | None]]:
    """crossenc's direct dependencies with the extra each belongs to (None: required); the
    onnx / tables extras' only where installed."""
    out: dict[str, tuple[Requirement, str | None]] = {}
    for text in metadata.requires("crossenc") or []:
        req = Requirement(text)
        extra = None
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            extra = next((e for e in EXTRAS if req.marker.evaluate({"extra": e})), None)
            if extra is None or installed_version(req.name) is None:
                continue  # the test extra, another platform's, or an extra not installed
        out.setdefault(canonical(req.name), (req, extra))
    return list(out.values())


def version_check(req: Requirement, extra: str | None) -> Check:
    """One dependency's installed version against crossenc's range and the tested set."""
    name = canonical(req.name)
    label = f"{name} [{extra}]" if extra else name
    installed = installed_version(req.name)
    tested = tested_versions().get(name)
    spec = str(req.specifier) or "any"
    fix = f"pip install {name}=={tested} (the tested version)" if tested else f"pip install '{req}'"

    def bad(detail: str) -> Check:
        return Check("versions", label, BAD, detail, fix, EXIT_ENVIRONMENT)

    if installed is None:
        return bad(f"not installed (crossenc needs {spec})")
    why = known_bad(name, installed)
    if why:
        return bad(f"{installed} is known to break crossenc: {why}")
    if not req.specifier.contains(installed, prereleases=True):
        return bad(f"{installed} is outside crossenc's range {spec}")
    if tested and same_release(installed, tested):
        return Check("versions", label, OK, f"{installed} (tested)")
    untested = f"{installed}, in range {spec}, untested (tested: {tested or 'none pinned'})"
    return Check("versions", label, UNTESTED, untested, fix if tested else "")


def versions_section(report: Report) -> None:
    """Python and every direct dependency against crossenc's range and the tested set."""
    python = platform.python_version()
    needs = metadata.metadata("crossenc").get("Requires-Python") or ""
    if SpecifierSet(needs).contains(python, prereleases=True):
        report.checks.append(Check("versions", "python", OK, f"{python} (crossenc needs {needs})"))
    else:
        fix = f"use a Python {needs} for crossenc"
        detail = f"{python} is outside crossenc's range {needs}"
        report.checks.append(Check("versions", "python", BAD, detail, fix, EXIT_ENVIRONMENT))
    facts = {}
    for req, extra in direct_requirements():
        check = version_check(req, extra)
        report.checks.append(check)
        facts[canonical(req.name)] = {
            "installed": installed_version(req.name),
            "tested": tested_versions().get(canonical(req.name)),
            "required": str(req.specifier),
            "extra": extra,
            "status": check.status,
        }
    report.facts["versions"] = {"python": python, "packages": facts}


# --- hardware -------------------------------------------------------------------------------


def cpu_info(path: str = "/proc/cpuinfo") -> tuple[str, set[str]]:
    """The CPU's model name and flags (of its first core), from /proc/cpuinfo; empty where
    there is none (not Linux)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path(path).read_text()
    except OSError:
        return name, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            name = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
            break
    return name, flags


def _nvidia_devices() -> list[str]:
    """The NVIDIA GPUs the kernel driver knows of (whether or not torch can use them)."""
    root = Path("/proc/driver/nvidia/gpus")
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def hardware_section(report: Report) -> None:
    """torch's build, the GPUs and the CPU's matrix units, and what model.dtype auto picks on
    each (the run's own :func:`crossenc.engine.torch_runner.pick_dtype`)."""
    add = report.checks.append
    try:
        import torch

        from crossenc.engine import torch_runner as torch_backend
    except ImportError as err:  # the versions section says which package is missing
        fix = "install crossenc's dependencies (pip install -c crossenc/constraints.txt crossenc)"
        add(Check("hardware", "torch", BAD, f"cannot be imported ({err})", fix, EXIT_ENVIRONMENT))
        report.facts["hardware"] = None
        return
    pick_dtype = torch_backend.pick_dtype
    cuda, hip = torch.version.cuda, getattr(torch.version, "hip", None)
    build = f"CUDA {cuda} build" if cuda else f"ROCm {hip} build" if hip else "CPU-only build"
    add(Check("hardware", "torch", INFO, f"{torch.__version__}, {build}"))

    name, flags = cpu_info()
    units = [words for flag, words in MATRIX_UNITS.items() if flag in flags]
    cores = os.cpu_count() or 0
    no_amx = "" if "amx_tile" in flags else " (no AMX)"
    detail = f"{name}, {cores} cores; matrix units: {', '.join(units) or 'none'}{no_amx}"
    add(Check("hardware", "cpu", INFO, detail))
    amx = torch_backend.cpu_has_bf16_matmul()
    cpu_dtype = str(pick_dtype("auto", torch.device("cpu"))).removeprefix("torch.")
    why = (
        "AMX: torch.cpu._is_amx_tile_supported() is true; bf16 runs 2.5-2.8x float32"
        if amx
        else "auto picks bfloat16 on a CPU with AMX only; torch.cpu._is_amx_tile_supported() "
        "is false here"
    )
    add(Check("hardware", "model.dtype auto on CPU", INFO, f"{cpu_dtype} ({why})"))

    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            with torch.cuda.device(i):
                dtype = str(pick_dtype("auto", torch.device("cuda", i))).removeprefix("torch.")
                bf16 = bool(torch.cuda.is_bf16_supported())
            gpus.append(
                {
                    "name": props.name,
                    "capability": f"{props.major}.{props.minor}",
                    "memory_gib": round(props.total_memory / 2**30, 1),
                    "bf16": bf16,
                    "dtype_auto": dtype,
                }
            )
            detail = (
                f"{props.name}, compute {props.major}.{props.minor}, "
                f"{props.total_memory / 2**30:.0f} GiB, bf16 {'yes' if bf16 else 'no'}: "
                f"model.dtype auto -> {dtype}"
            )
            add(Check("hardware", f"gpu {i}", OK, detail))
    elif _nvidia_devices():
        detail = (
            f"{len(_nvidia_devices())} NVIDIA GPU(s) in /proc/driver/nvidia, none usable by "
            f"this torch ({build}): replicas would score on CPU"
        )
        fix = (
            "install a CUDA build of torch matching the driver (pytorch.org's index)"
            if not cuda
            else "check the NVIDIA driver and CUDA_VISIBLE_DEVICES"
        )
        add(Check("hardware", "gpu", UNTESTED, detail, fix))
    else:
        add(Check("hardware", "gpu", INFO, "none visible to torch: replicas here score on CPU"))
    report.facts["hardware"] = {
        "torch": torch.__version__,
        "cuda": cuda,
        "hip": hip,
        "cpu": name,
        "cpu_cores": cores,
        "cpu_flags": {flag: flag in flags for flag in MATRIX_UNITS},
        "amx": amx,
        "dtype_auto_cpu": cpu_dtype,
        "gpus": gpus,
    }


# --- cluster --------------------------------------------------------------------------------


def dashboard_url(address: str) -> str:
    """The dashboard's HTTP address for a RAY_ADDRESS: the address itself when it is one
    (``http://head:8265``), else port 8265 of its host (``ray://head:10001``, ``head:6379``)."""
    if address.startswith(("http://", "https://")):
        return address.rstrip("/")
    host = address.split("://", 1)[-1].rsplit(":", 1)[0]
    return f"http://{'127.0.0.1' if host in ('auto', '') else host}:{DASHBOARD_PORT}"


def ray_auth_token() -> str | None:
    """The Ray token this client would send, where Ray's CLI looks: RAY_AUTH_TOKEN, else the
    file RAY_AUTH_TOKEN_PATH names, else ~/.ray/auth_token; None without one."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _get(url: str) -> dict[str, Any]:
    """GET a dashboard endpoint's JSON, with the client's Ray token (:func:`ray_auth_token`)."""
    token = ray_auth_token()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        return json.loads(response.read())


def cluster_facts(url: str) -> dict[str, Any]:
    """The cluster's Ray and Python versions and its alive nodes' resources, from the dashboard
    at ``url`` (endpoints of Ray 2.x's job and state APIs); raises OSError when unreachable."""
    ray_version = _get(f"{url}/api/version").get("ray_version")
    try:
        meta = _get(f"{url}/api/v0/cluster_metadata").get("data", {})
    except urllib.error.HTTPError:  # a dashboard without the endpoint: Python stays unknown
        meta = {}
    nodes = _get(f"{url}/api/v0/nodes?limit=10000&detail=false")["data"]["result"]["result"]
    alive = [n for n in nodes if n.get("state") == "ALIVE"]
    gpu_types: dict[str, float] = {}
    for node in alive:
        res = node.get("resources_total") or {}
        kinds = [k.split(":", 1)[1] for k in res if k.startswith("accelerator_type:")]
        kind = (kinds or [(node.get("labels") or {}).get("ray.io/accelerator-type", "GPU")])[0]
        if res.get("GPU"):
            gpu_types[kind] = gpu_types.get(kind, 0) + res["GPU"]
    return {
        "ray_version": meta.get("rayVersion") or meta.get("ray_version") or ray_version,
        "python_version": meta.get("pythonVersion") or meta.get("python_version"),
        "nodes": len(alive),
        "cpus": sum((n.get("resources_total") or {}).get("CPU", 0) for n in alive),
        "gpus": sum(gpu_types.values()),
        "gpu_types": gpu_types,
    }


def _minor(version: str) -> tuple[int, ...] | str:
    """major.minor of a version (the string itself where it is not a version)."""
    try:
        return Version(version).release[:2]
    except InvalidVersion:
        return version


def _compare(what: str, cluster: str | None, client: str, fix: str) -> Check:
    """A cluster's version against the client's: major.minor apart is ✘, patch apart ~."""
    if cluster is None:
        return Check("cluster", what, UNTESTED, f"the dashboard does not say (client {client})")
    detail = f"cluster {cluster}, client {client}"
    if _minor(cluster) != _minor(client):
        return Check("cluster", what, BAD, f"{detail}: they differ", fix, EXIT_ENVIRONMENT)
    if not same_release(cluster, client):
        return Check("cluster", what, UNTESTED, f"{detail} (same major.minor)", fix)
    return Check("cluster", what, OK, detail)


def cluster_section(report: Report) -> None:
    """With RAY_ADDRESS: the cluster's Ray and Python against this client's, and what it
    offers; without, the in-process Ray a run would start."""
    address = os.environ.get("RAY_ADDRESS", "")
    if not address or address == "local":
        detail = f"unset: crossenc score starts an in-process Ray on {os.cpu_count()} cores here"
        report.checks.append(Check("cluster", "RAY_ADDRESS", INFO, detail))
        report.facts["cluster"] = None
        return
    url = dashboard_url(address)
    try:
        facts = cluster_facts(url)
    except urllib.error.HTTPError as err:
        refused = err.code in (401, 403)
        detail = f"{address}: the Ray dashboard at {url} answered HTTP {err.code} {err.reason}"
        fix = (
            "set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the cluster's token "
            "(ray get-auth-token on the head)"
            if refused
            else "check RAY_ADDRESS"
        )
        report.checks.append(Check("cluster", "RAY_ADDRESS", BAD, detail, fix, EXIT_ENVIRONMENT))
        report.facts["cluster"] = {"address": address, "dashboard": url, "error": str(err)}
        return
    except (OSError, ValueError, KeyError) as err:
        detail = f"{address}: cannot reach the Ray dashboard at {url} ({err})"
        fix = (
            f"set RAY_ADDRESS to the head's dashboard, http://<head>:{DASHBOARD_PORT}, "
            "and check the network"
        )
        report.checks.append(Check("cluster", "RAY_ADDRESS", BAD, detail, fix, EXIT_ENVIRONMENT))
        report.facts["cluster"] = {"address": address, "dashboard": url, "error": str(err)}
        return
    report.facts["cluster"] = {"address": address, "dashboard": url, **facts}
    add = report.checks.append
    where = "" if url == address.rstrip("/") else f", assumed at {url},"
    add(Check("cluster", "RAY_ADDRESS", OK, f"{address}: the dashboard{where} answers"))
    client_ray = installed_version("ray") or "absent"
    ray_fix = (
        f"install ray=={facts['ray_version']} in the client (pip install "
        f"'ray[default]=={facts['ray_version']}'), or run the cluster on an image with "
        f"ray=={client_ray}"
    )
    add(_compare("ray", facts["ray_version"], client_ray, ray_fix))
    py = platform.python_version()
    cluster_py = facts["python_version"]
    py_fix = (
        f"use Python {'.'.join(cluster_py.split('.')[:2])} in the client, or run the cluster "
        f"on an image with Python {'.'.join(py.split('.')[:2])}"
        if cluster_py
        else ""
    )
    add(_compare("python", cluster_py, py, py_fix))
    kinds = ", ".join(f"{n:g} {kind}" for kind, n in sorted(facts["gpu_types"].items()))
    gpus = f"{facts['gpus']:g} GPUs ({kinds})" if kinds else "no GPUs"
    detail = f"{facts['nodes']} node(s), {facts['cpus']:g} CPUs, {gpus}"
    add(Check("cluster", "resources", INFO, detail))


# --- config ---------------------------------------------------------------------------------


def _size(n: float) -> str:
    """Bytes in words (KiB, MiB, GiB)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover - the loop returns


def _hub_model(cfg: ModelConfig) -> str:
    """Whether a Hub id can be loaded: in the local Hub cache, or the Hub answers for it;
    raises the run's own StorageError / ConfigError otherwise."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url, try_to_load_from_cache

    from crossenc.errors import Problem, StorageError, one_line, storage_message
    from crossenc.models.describe import _hub_error, _hub_offline

    cached = try_to_load_from_cache(cfg.name, "config.json", revision=cfg.revision)
    if isinstance(cached, str):
        return f"a Hub id, in the local Hub cache ({Path(cached).parent})"
    if _hub_offline():
        problem = Problem("hub_offline", "config.json not in the local Hub cache")
        raise StorageError(storage_message(problem, "model", cfg.name), "model")
    try:
        get_hf_file_metadata(hf_hub_url(cfg.name, "config.json", revision=cfg.revision))
    except Exception as err:
        worded = _hub_error(cfg, err) or StorageError(
            storage_message(Problem("hub_unreachable", one_line(err)), "model", cfg.name), "model"
        )
        raise worded from err
    return "a Hub id, found on the Hugging Face Hub (downloaded on first use)"


def _model(cfg: ModelConfig) -> str:
    """Whether model.name can be read: an s3:// folder listed, a local folder checked for
    config, weights and tokenizer, a Hub id found (nothing downloaded)."""
    from crossenc.models.describe import check_model_folder
    from crossenc.models.load import list_remote_model, model_source
    from crossenc.storage import is_remote

    if is_remote(cfg.name):
        _, listing = list_remote_model(cfg)
        size = sum(int(s or 0) for _, s, _ in listing)
        return f"{len(listing)} file(s), {_size(size)} on the object store"
    source = model_source(cfg)
    if not Path(source).is_dir():
        return _hub_model(cfg)
    check_model_folder(cfg, source)
    return "a local folder with config, weights and tokenizer"


def _quick(cfg: JobConfig) -> JobConfig:
    """The config with at most 2 attempts per store request (storage.max_attempts), so that an
    unreachable endpoint is reported in seconds, not after a run's minutes of retries."""
    update = {}
    for section in ("input", "output", "model"):
        part = getattr(cfg, section)
        attempts = min(part.storage.max_attempts, QUICK_ATTEMPTS)
        storage = part.storage.model_copy(update={"max_attempts": attempts})
        update[section] = part.model_copy(update={"storage": storage})
    return cfg.model_copy(update=update)


def config_section(report: Report, path: str, overrides: list[str]) -> None:
    """Whether the config is valid, and its input, output and model reachable with their
    storage settings; the failures worded as ``crossenc validate`` words them."""
    from crossenc.config import ConfigError, load_config
    from crossenc.inputs.plan import check_output_writable, check_paths, list_input

    add = report.checks.append
    try:
        cfg = load_config(path, overrides)
    except ConfigError as err:
        first, *rest = str(err).splitlines()  # pydantic's problems, one a line: joined
        detail = " ".join([first, "; ".join(part.strip() for part in rest)]).strip()
        add(Check("config", "config", BAD, detail, "", EXIT_CONFIG))
        report.facts["config"] = {"path": path, "valid": False}
        return
    add(Check("config", "config", OK, f"{path}: valid"))
    cfg = _quick(cfg)

    def input_words(cfg: JobConfig) -> str:
        _, sizes = list_input(cfg)
        return f"{len(sizes)} Parquet file(s), {_size(sum(sizes.values()))}"

    def output_words(cfg: JobConfig) -> str:
        check_paths(cfg)
        check_output_writable(cfg)
        return "writable (checked without writing)"

    probes: list[tuple[str, str, Callable[[JobConfig], str]]] = [
        ("input.path", cfg.input.path, input_words),
        ("output.path", cfg.output.path, output_words),
        ("model.name", cfg.model.name, lambda c: _model(c.model)),
    ]
    reachable = {}
    for key, where, probe in probes:
        try:
            add(Check("config", key, OK, f"{where}: {probe(cfg)}"))
            reachable[key] = True
        except Exception as err:
            code, message = explain(err, cfg, ["doctor", "--config", path, *overrides])
            fix = f"fix {key}" if code in (EXIT_CONFIG, EXIT_INPUT) else ""  # storage's say
            add(Check("config", key, BAD, message.removeprefix("crossenc: "), fix, code))
            reachable[key] = False
    report.facts["config"] = {"path": path, "valid": True, "reachable": reachable}


def diagnose(config: str | None = None, overrides: list[str] | None = None) -> Report:
    """Every section's checks (the config's with ``config``)."""
    report = Report()
    versions_section(report)
    hardware_section(report)
    cluster_section(report)
    if config is not None:
        config_section(report, config, list(overrides or []))
    return report


def run_doctor(config: str | None, overrides: list[str], as_json: bool) -> int:
    """``crossenc doctor``: print the report (JSON with ``as_json``); returns the exit code."""
    report = diagnose(config, overrides)
    print(json.dumps(report.as_dict(), indent=2) if as_json else report.text())
    sys.stdout.flush()
    return report.exit_code
