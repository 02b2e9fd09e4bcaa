"""Checks of the deployment files in infra/: no network, no cluster, no docker.

- the Ray cluster launcher config validates against the JSON Schema that the installed ray
  package ships (and through Ray's own prepare_config/validate_config), and broken variants do not;
- the KubeRay RayJob manifest has what KubeRay needs to run crossenc (check_rayjob lists the
  problems; every broken variant must produce one);
- the Dockerfile pins every pip install and its base image;
- the Dockerfile and runtime_env.yaml pin the tested set (crossenc/constraints.txt), inside
  pyproject's ranges;
- the test environment's DuckDB extension packages are built for its pinned duckdb.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from crossenc.versions import canonical, tested_versions

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
CLUSTER_YAML = INFRA / "aws-gpu-cluster.yaml"
RAYJOB_YAML = INFRA / "kuberay-rayjob.yaml"
DOCKERFILE = INFRA / "Dockerfile"
RUNTIME_ENV = INFRA / "runtime_env.yaml"

# AWS access key ids (long-term AKIA, temporary ASIA) and anything that looks like a secret key
# assigned to a name: none of these may appear literally in infra files.
AWS_KEY_ID = re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")
AWS_SECRET = re.compile(r"(?i)aws_secret_access_key\s*[=:]\s*['\"]?[A-Za-z0-9/+]{40}")
SECRET_ENV_NAMES = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def pyproject_dependencies() -> dict[str, Requirement]:
    """The dependencies a cluster's Python needs: crossenc's own, its tables and evaluate
    extras."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    optional = data["project"]["optional-dependencies"]
    extras = optional["tables"] + optional["evaluate"]
    reqs = [Requirement(r) for r in data["project"]["dependencies"] + extras]
    return {canonical(r.name): r for r in reqs}


# --- Ray cluster launcher ----------------------------------------------------------------------


def ray_cluster_schema() -> dict[str, Any]:
    import ray.autoscaler

    path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    return json.loads(path.read_text())


def test_cluster_config_validates_against_ray_schema() -> None:
    jsonschema.validate(load_yaml(CLUSTER_YAML), ray_cluster_schema())


def test_cluster_config_passes_rays_own_validation() -> None:
    """What `ray up` does before launching anything: merge AWS defaults, then validate."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(load_yaml(CLUSTER_YAML))
    validate_config(config)
    assert config["available_node_types"][config["head_node_type"]]["max_workers"] == 0


def test_cluster_config_content() -> None:
    config = load_yaml(CLUSTER_YAML)
    assert config["provider"]["type"] == "aws"
    assert config["provider"]["region"]
    assert 1 <= config["idle_timeout_minutes"] <= 60
    node_types = config["available_node_types"]
    head = node_types[config["head_node_type"]]
    assert not head["resources"].get("GPU"), "the head is a CPU instance"
    gpu_types = [t for name, t in node_types.items() if t["resources"].get("GPU")]
    assert gpu_types, "a GPU worker group"
    for node_type in gpu_types:
        assert node_type["resources"]["GPU"] == 1
        assert node_type["min_workers"] == 0
        assert 1 <= node_type["max_workers"] <= config["max_workers"]
        assert node_type["node_config"]["InstanceType"].startswith(("g4dn.", "g5.", "g6."))
    image = config["docker"]["image"]
    assert image == rayjob_image(load_yaml(RAYJOB_YAML)), "same image on both platforms"
    assert not image.endswith(":latest") and ":" in image.rsplit("/", 1)[-1]


def _drop_provider(c: dict) -> None:
    del c["provider"]


def _gpu_as_string(c: dict) -> None:
    c["available_node_types"]["gpu_worker"]["resources"]["GPU"] = "1"


def _unknown_key(c: dict) -> None:
    c["idle_timeout"] = 10


def _node_type_without_node_config(c: dict) -> None:
    del c["available_node_types"]["gpu_worker"]["node_config"]


def _max_workers_as_string(c: dict) -> None:
    c["max_workers"] = "eight"


@pytest.mark.parametrize(
    "breakage",
    [_drop_provider, _gpu_as_string, _unknown_key, _node_type_without_node_config,
     _max_workers_as_string],
)  # fmt: skip
def test_broken_cluster_config_is_rejected(breakage: Callable[[dict], None]) -> None:
    config = load_yaml(CLUSTER_YAML)
    breakage(config)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, ray_cluster_schema())


def test_cluster_head_type_must_exist() -> None:
    """Ray's validate_config catches what the schema cannot: a head type that is not defined."""
    from ray.autoscaler._private.util import validate_config

    config = load_yaml(CLUSTER_YAML)
    config["head_node_type"] = "no_such_type"
    config["cluster_synced_files"] = []
    with pytest.raises(ValueError, match="head_node_type"):
        validate_config(config)


# --- KubeRay RayJob ----------------------------------------------------------------------------


def rayjob_image(doc: dict) -> str | None:
    try:
        return doc["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0][
            "image"
        ]
    except (KeyError, IndexError, TypeError):
        return None


def _containers(pod_template: Any) -> list[dict]:
    try:
        containers = pod_template["spec"]["containers"]
    except (KeyError, TypeError):
        return []
    return containers if isinstance(containers, list) else []


def _literal_secret_problems(doc: dict) -> list[str]:
    problems = []
    text = yaml.safe_dump(doc)
    if AWS_KEY_ID.search(text) or AWS_SECRET.search(text):
        problems.append("a literal AWS access key in the manifest")
    spec = doc.get("spec") or {}
    cluster = spec.get("rayClusterSpec") or {}
    templates = [(cluster.get("headGroupSpec") or {}).get("template")]
    templates += [g.get("template") for g in cluster.get("workerGroupSpecs") or []]
    for template in templates:
        for container in _containers(template):
            for var in container.get("env") or []:
                if var.get("name") in SECRET_ENV_NAMES and "value" in var:
                    problems.append(f"{var['name']} given as a literal value, not valueFrom")
                if var.get("name") in SECRET_ENV_NAMES and "secretKeyRef" not in (
                    var.get("valueFrom") or {}
                ):
                    problems.append(f"{var['name']} does not come from a Secret")
    entrypoint = str(spec.get("entrypoint", ""))
    if re.search(r"storage\.(key|secret|token)=", entrypoint):
        problems.append("storage credentials passed on the command line")
    return problems


def _entrypoint_problems(entrypoint: Any) -> list[str]:
    if not isinstance(entrypoint, str) or not entrypoint.strip():
        return ["spec.entrypoint missing"]
    args = shlex.split(entrypoint)
    problems = []
    if len(args) < 2 or not args[0].startswith("python") or not args[1].endswith("jobs/score.py"):
        problems.append(f"entrypoint does not run jobs/score.py: {entrypoint!r}")
    if "--config" not in args or args.index("--config") + 1 >= len(args):
        return [*problems, "entrypoint has no --config"]
    config = args[args.index("--config") + 1]
    preset = ROOT / "configs" / Path(config).name
    if Path(config).parent.name != "configs" or not preset.is_file():
        problems.append(f"--config {config} is not a preset in configs/")
    sets = dict(
        args[i + 1].split("=", 1)
        for i, a in enumerate(args[:-1])
        if a == "--set" and "=" in args[i + 1]
    )
    for key in ("input.path", "output.path"):
        if not sets.get(key, "").startswith("s3://"):
            problems.append(f"entrypoint does not --set {key}=s3://...")
    return problems


def _group_problems(where: str, group: Any, *, worker: bool) -> list[str]:
    if not isinstance(group, dict):
        return [f"{where} missing"]
    problems = []
    if not isinstance(group.get("rayStartParams"), dict):
        problems.append(f"{where}.rayStartParams missing")
    containers = _containers(group.get("template"))
    if not containers:
        return [*problems, f"{where}.template.spec.containers missing"]
    image = containers[0].get("image")
    if not image or image.endswith(":latest") or ":" not in image.rsplit("/", 1)[-1]:
        problems.append(f"{where} image not pinned to a tag: {image!r}")
    if worker:
        for key in ("groupName", "replicas", "minReplicas", "maxReplicas"):
            if key not in group:
                problems.append(f"{where}.{key} missing")
        counts = [group.get(k) for k in ("minReplicas", "replicas", "maxReplicas")]
        if all(isinstance(c, int) for c in counts) and not counts[0] <= counts[1] <= counts[2]:
            problems.append(f"{where}: need minReplicas <= replicas <= maxReplicas, got {counts}")
        if isinstance(counts[2], int) and counts[2] < 1:
            problems.append(f"{where}.maxReplicas must be at least 1")
        limits = (containers[0].get("resources") or {}).get("limits") or {}
        if str(limits.get("nvidia.com/gpu", "0")) != "1":
            problems.append(f"{where} container has no nvidia.com/gpu: 1 limit")
    return problems


def check_rayjob(doc: Any) -> list[str]:
    """Problems that would stop KubeRay from running crossenc from this RayJob (empty: none)."""
    if not isinstance(doc, dict):
        return ["manifest is not a mapping"]
    problems = []
    if doc.get("apiVersion") != "ray.io/v1":
        problems.append(f"apiVersion is {doc.get('apiVersion')!r}, not ray.io/v1")
    if doc.get("kind") != "RayJob":
        problems.append(f"kind is {doc.get('kind')!r}, not RayJob")
    name = (doc.get("metadata") or {}).get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name):
        problems.append(f"metadata.name {name!r} is not a DNS-1123 label")
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        return [*problems, "spec missing"]
    problems += _entrypoint_problems(spec.get("entrypoint"))
    if spec.get("shutdownAfterJobFinishes") is not True:
        problems.append("spec.shutdownAfterJobFinishes is not true")
    ttl = spec.get("ttlSecondsAfterFinished")
    if not isinstance(ttl, int) or ttl < 0:
        problems.append("spec.ttlSecondsAfterFinished missing or negative")
    if spec.get("submissionMode", "K8sJobMode") not in ("K8sJobMode", "HTTPMode", "SidecarMode"):
        problems.append(f"spec.submissionMode {spec.get('submissionMode')!r} unknown")
    if "runtimeEnvYAML" in spec and not isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict):
        problems.append("spec.runtimeEnvYAML does not parse to a mapping")
    cluster = spec.get("rayClusterSpec")
    if not isinstance(cluster, dict):
        return [*problems, "spec.rayClusterSpec missing"]
    problems += _group_problems(
        "rayClusterSpec.headGroupSpec", cluster.get("headGroupSpec"), worker=False
    )
    workers = cluster.get("workerGroupSpecs")
    if not isinstance(workers, list) or not workers:
        problems.append("rayClusterSpec.workerGroupSpecs missing")
    else:
        gpu_groups = 0
        for i, group in enumerate(workers):
            where = f"rayClusterSpec.workerGroupSpecs[{i}]"
            group_problems = _group_problems(where, group, worker=True)
            gpu_groups += not any("nvidia.com/gpu" in p for p in group_problems)
            problems += [p for p in group_problems if "nvidia.com/gpu" not in p]
        if not gpu_groups:
            problems.append("no worker group has a nvidia.com/gpu: 1 limit")
    problems += _literal_secret_problems(doc)
    return problems


def test_rayjob_manifest_has_what_kuberay_needs() -> None:
    assert check_rayjob(load_yaml(RAYJOB_YAML)) == []


def test_rayjob_uses_image_built_for_the_base_ray_version() -> None:
    doc = load_yaml(RAYJOB_YAML)
    base = dockerfile_from(DOCKERFILE.read_text())
    assert base.split(":")[1].startswith(doc["spec"]["rayClusterSpec"]["rayVersion"] + "-")


def _set(path: str, value: Any) -> Callable[[dict], None]:
    def apply(doc: dict) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value

    apply.__name__ = f"del {path}" if value is _DELETE else f"{path}={value!r}"
    return apply


_DELETE = object()
_HEAD = "spec.rayClusterSpec.headGroupSpec"
_WORKER = "spec.rayClusterSpec.workerGroupSpecs.0"
_WORKER_C = f"{_WORKER}.template.spec.containers.0"


def _literal_key(doc: dict) -> None:
    env = doc["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    env["env"] = [{"name": "AWS_SECRET_ACCESS_KEY", "value": "x" * 40}]


def _akia_in_runtime_env(doc: dict) -> None:
    doc["spec"]["runtimeEnvYAML"] = "env_vars:\n  KEY_ID: AKIAABCDEFGHIJKLMNOP\n"


BROKEN_RAYJOBS = [
    _set("apiVersion", "ray.io/v1alpha2"),
    _set("kind", "RayCluster"),
    _set("metadata.name", "Crossenc_NLI"),
    _set("spec.entrypoint", _DELETE),
    _set("spec.entrypoint", "python jobs/score.py --config configs/no-such-preset.yaml"),
    _set("spec.entrypoint", "python jobs/other.py --config configs/nli-labels.yaml"),
    _set("spec.shutdownAfterJobFinishes", False),
    _set("spec.ttlSecondsAfterFinished", _DELETE),
    _set("spec.rayClusterSpec", _DELETE),
    _set(f"{_HEAD}.rayStartParams", _DELETE),
    _set(f"{_HEAD}.template.spec.containers.0.image", _DELETE),
    _set(f"{_HEAD}.template.spec.containers.0.image", "rayproject/ray:latest"),
    _set(f"{_WORKER}.maxReplicas", _DELETE),
    _set(f"{_WORKER}.minReplicas", 3),
    _set(f"{_WORKER_C}.resources", {"limits": {"cpu": "4"}}),
    _set("spec.rayClusterSpec.workerGroupSpecs", []),
    _literal_key,
    _akia_in_runtime_env,
]


@pytest.mark.parametrize("breakage", BROKEN_RAYJOBS, ids=lambda f: f.__name__)
def test_broken_rayjob_is_caught(breakage: Callable[[dict], None]) -> None:
    doc = copy.deepcopy(load_yaml(RAYJOB_YAML))
    breakage(doc)
    assert check_rayjob(doc), f"{breakage.__name__} not detected"


def test_no_literal_aws_keys_in_infra() -> None:
    for path in sorted(INFRA.iterdir()):
        if path.is_file():
            text = path.read_text()
            assert not AWS_KEY_ID.search(text), path
            assert not AWS_SECRET.search(text), path


# --- Dockerfile --------------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        lines.append(current)
        current = ""
    out = []
    for line in lines:
        instruction, _, args = line.partition(" ")
        out.append((instruction.upper(), args.strip()))
    return out


def dockerfile_args(text: str) -> dict[str, str]:
    args = {}
    for instruction, rest in dockerfile_instructions(text):
        if instruction == "ARG" and "=" in rest:
            name, value = rest.split("=", 1)
            args[name.strip()] = value.strip()
    return args


def dockerfile_from(text: str) -> str:
    froms = [rest for instruction, rest in dockerfile_instructions(text) if instruction == "FROM"]
    assert len(froms) == 1
    return froms[0].split()[0]


def _expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], text)


PIP_FLAGS_WITH_VALUE = {"--index-url", "-i", "--extra-index-url", "-c", "--constraint"}


def shell_commands(line: str) -> list[list[str]]:
    """The simple commands of a shell line, split at &&, ||, ; and | outside quotes."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars="&|;")
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in ("&&", "||", ";", "|"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def pip_install_problems(text: str) -> list[str]:
    """Every pip install names exact versions; a local path only with --no-deps."""
    args = dockerfile_args(text)
    problems = []
    installs = 0
    for instruction, rest in dockerfile_instructions(text):
        if instruction != "RUN":
            continue
        for words in shell_commands(_expand(rest, args)):
            command = " ".join(words)
            if "pip" not in [Path(w).name for w in words[:3]] or "install" not in words:
                continue
            installs += 1
            targets, skip = [], False
            for word in words[words.index("install") + 1 :]:
                if skip:
                    skip = False
                elif word in PIP_FLAGS_WITH_VALUE:
                    skip = True
                elif not word.startswith("-"):
                    targets.append(word)
            if "-r" in words or "--requirement" in words:
                problems.append(f"requirements file in {command!r}: pin inline")
            for target in targets:
                if target.startswith(("/", ".")):
                    if "--no-deps" not in words:
                        problems.append(f"{target} installed without --no-deps")
                    continue
                spec = Requirement(target).specifier
                if len(spec) != 1 or next(iter(spec)).operator != "==":
                    problems.append(f"{target} is not pinned with ==")
    if not installs:
        problems.append("no pip install found")
    return problems


def test_dockerfile_pins_base_image_and_every_pip_install() -> None:
    text = DOCKERFILE.read_text()
    base = dockerfile_from(text)
    name, _, tag = base.rpartition(":")
    assert name == "rayproject/ray" and tag and tag != "latest" and "/" not in tag, base
    assert re.fullmatch(r"\d+\.\d+\.\d+-py311-cu\d+", tag), tag
    assert pip_install_problems(text) == []


@pytest.mark.parametrize(
    "line",
    [
        "RUN pip install transformers",
        "RUN pip install transformers>=4.45",
        "RUN pip install /app",
        "RUN pip install -r requirements.txt",
        "RUN python -m pip install --upgrade torch",
    ],
)
def test_unpinned_pip_install_is_caught(line: str) -> None:
    assert pip_install_problems(f"FROM rayproject/ray:2.60.0-py311-cu124\n{line}\n")


def dockerfile_pins(text: str) -> dict[str, str]:
    """name -> version of every ``name==version`` the Dockerfile installs; ray's from the base
    image's tag."""
    args = dockerfile_args(text)
    pins = {}
    for instruction, rest in dockerfile_instructions(text):
        if instruction == "RUN":
            pins.update(
                (canonical(m.group(1)), m.group(2))
                for m in re.finditer(r"([A-Za-z0-9_.-]+)==([\w.+]+)", _expand(rest, args))
            )
    pins["ray"] = dockerfile_from(text).split(":")[1].split("-")[0]
    return pins


def pin_problems(pins: dict[str, str], where: str) -> list[str]:
    """What disagrees with the tested set (constraints.txt) or pyproject's ranges."""
    tested, deps = tested_versions(), pyproject_dependencies()
    problems = []
    for name, version in pins.items():
        if name not in deps:
            problems.append(f"{name} pinned in {where} but not a dependency")
        elif not deps[name].specifier.contains(Version(version)):
            problems.append(f"{name}=={version} in {where} is outside pyproject's {deps[name]}")
        if tested.get(name) != version:
            problems.append(
                f"{name}=={version} in {where}, but the tested set (crossenc/constraints.txt) "
                f"has {tested.get(name)}: pin {name}=={tested.get(name)}"
            )
    return problems


def test_dockerfile_pins_are_the_tested_set() -> None:
    """Every pin of the image (torch and ray included) is the version the suite runs with."""
    text = DOCKERFILE.read_text()
    pins = dockerfile_pins(text)
    assert pin_problems(pins, "the Dockerfile") == []
    missing = set(pyproject_dependencies()) - set(pins)
    assert not missing, f"not pinned in the Dockerfile: {missing}"
    installs = [r for i, r in dockerfile_instructions(text) if i == "RUN" and "pip install" in r]
    unconstrained = [r for r in installs if "torch==" not in r and "--no-deps" not in r]
    assert unconstrained and all("-c /tmp/constraints.txt" in r for r in unconstrained)
    assert ("COPY", "--chown=ray:users crossenc/constraints.txt /tmp/constraints.txt") in (
        dockerfile_instructions(text)
    )


def test_a_pin_off_the_tested_set_is_caught() -> None:
    text = DOCKERFILE.read_text().replace("ARG TORCH_VERSION=2.13.0", "ARG TORCH_VERSION=2.6.0")
    assert "pin torch==2.13.0" in " ".join(pin_problems(dockerfile_pins(text), "the Dockerfile"))
    pins = dict(dockerfile_pins(DOCKERFILE.read_text()), transformers="4.40.0")
    problems = " ".join(pin_problems(pins, "x"))
    assert "outside pyproject" in problems and "pin transformers==" in problems


def test_dockerfile_runs_as_non_root_with_model_caches() -> None:
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    users = [rest for instruction, rest in instructions if instruction == "USER"]
    assert users and users[-1] not in ("root", "0"), users
    env = " ".join(rest for instruction, rest in instructions if instruction == "ENV")
    assert "HF_HOME=/models/hf" in env
    assert any(i == "COPY" and rest.split()[-2:] == [".", "/app"] for i, rest in instructions)
    ignore = (INFRA / "Dockerfile.dockerignore").read_text().split()
    assert {".git", ".venv"} <= set(ignore)


# --- runtime_env -------------------------------------------------------------------------------


def test_runtime_env_packages_are_pinned() -> None:
    env = load_yaml(RUNTIME_ENV)
    assert set(env) <= {"pip", "env_vars", "working_dir", "py_modules", "excludes", "config"}
    packages = env["pip"]["packages"] if isinstance(env["pip"], dict) else env["pip"]
    assert packages
    for package in packages:
        assert Requirement(package).specifier, f"{package} has no version or range"
    assert all(isinstance(v, str) for v in env.get("env_vars", {}).values())


def test_runtime_env_pins_the_tested_set() -> None:
    """runtime_env.yaml installs every dependency but ray and torch, at the tested version."""
    env = load_yaml(RUNTIME_ENV)
    packages = env["pip"]["packages"] if isinstance(env["pip"], dict) else env["pip"]
    pins = {}
    for package in packages:
        req = Requirement(package)
        (spec,) = req.specifier
        assert spec.operator == "==", f"{package}: pin it to the tested set with =="
        pins[canonical(req.name)] = spec.version
    assert pin_problems(pins, "runtime_env.yaml") == []
    assert set(pins) == set(pyproject_dependencies()) - {"ray", "torch"}


# --- the test environment ----------------------------------------------------------------------


def test_duckdb_readers_are_built_for_the_tested_duckdb() -> None:
    """The table tests LOAD DuckDB's own readers from duckdb-ext-* packages, each release built
    for one duckdb (while its requirement names no version): the tested set pins every one the
    tests load to a build for its duckdb, and pyproject's test extra pins the same versions."""
    from tests.helpers import DUCKDB_EXTENSIONS

    tested = tested_versions()
    wanted = {f"duckdb-ext-{name}" for name in DUCKDB_EXTENSIONS}
    pinned = {name: v for name, v in tested.items() if name.startswith("duckdb-ext-")}
    assert set(pinned) == wanted
    for name, version in pinned.items():
        assert Version(version).release[:3] == Version(tested["duckdb"]).release, (name, version)
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extra = [Requirement(r) for r in data["project"]["optional-dependencies"]["test"]]
    specifiers = {r.name.lower(): str(r.specifier) for r in extra}
    for name in ("duckdb", *wanted):
        assert specifiers.get(name) == f"=={tested[name]}", name
