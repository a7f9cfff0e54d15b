"""Checks of cluster/: the image, KubeRay manifests and launcher config.

Each file is validated against the schema its own tool applies (KubeRay's CRDs as a Kubernetes
API server reads them, Ray's cluster-config schema and ``validate_config``), then against
pyproject.toml (Ray, torch and Python versions, the image tag) and against the jobs themselves
(every command line in the manifests and in cluster/README.md parses with the job's own
``build_parser()``).
"""

from __future__ import annotations

import copy
import functools
import json
import pathlib
import re
import shlex
import tomllib
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from tests.fixtures.jobs import load_job

REPO = pathlib.Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
DOCKERFILE = CLUSTER / "Dockerfile"
LAUNCHER = CLUSTER / "aws.yaml"
README = CLUSTER / "README.md"
MANIFESTS = sorted((CLUSTER / "kuberay").glob("*.yaml"))
YAML_FILES = sorted(p for p in CLUSTER.rglob("*") if p.suffix in (".yaml", ".yml"))
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
SECRET_NAME = "iic-survey-s3"
CREDENTIAL_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|ACCESS_KEY", re.IGNORECASE)


def _load(path: pathlib.Path) -> Any:
    return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


# -- pyproject, Dockerfile and the image tag they imply ---------------------------------------


@functools.cache
def _pins() -> dict[str, Any]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = {Requirement(r).name: Requirement(r) for r in project["dependencies"]}
    (ray_pin,) = [s.version for s in reqs["ray"].specifier if s.operator == "=="]
    return {
        "version": project["version"],
        "ray": ray_pin,
        "torch": reqs["torch"].specifier,
        "python": SpecifierSet(project["requires-python"]),
    }


@functools.cache
def _dockerfile() -> dict[str, str]:
    text = DOCKERFILE.read_text()
    base = re.search(r"^FROM\s+rayproject/ray:(\S+)\s*$", text, re.MULTILINE)
    tag = (
        re.fullmatch(
            r"(?P<ray>\d+\.\d+\.\d+)-py(?P<py>3)(?P<minor>\d+)-(?P<flavour>gpu|cu\d+)", base[1]
        )
        if base
        else None
    )
    if tag is None:
        pytest.fail("cluster/Dockerfile must start FROM rayproject/ray:<ray>-py3XX-gpu (or -cuXXX)")
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, re.MULTILINE))
    workdir = re.findall(r"^WORKDIR\s+(\S+)", text, re.MULTILINE)
    return {
        "text": text,
        "ray": tag["ray"],
        "python": f"{tag['py']}.{tag['minor']}",
        "torch": args.get("TORCH_VERSION", ""),
        "torch_cuda": args.get("TORCH_CUDA", ""),
        "workdir": workdir[-1] if workdir else "",
    }


def _expected_tag() -> str:
    pins, py = _pins(), _dockerfile()["python"].replace(".", "")
    return f"{pins['version']}-ray{pins['ray']}-py{py}-gpu"


def test_dockerfile_base_image_matches_pyproject() -> None:
    df, pins = _dockerfile(), _pins()
    assert df["ray"] == pins["ray"], "Dockerfile FROM tag and pyproject's ray pin differ"
    checked = re.findall(r"v\[0\] == '([\d.]+)'", df["text"])
    assert checked == [pins["ray"]], "the Dockerfile's build-time Ray version check drifted"
    assert Version(f"{df['python']}.0") in pins["python"], (
        "base image Python not in requires-python"
    )


def test_dockerfile_installs_cuda_torch_in_pyproject_range() -> None:
    df = _dockerfile()
    assert Version(df["torch"]) in _pins()["torch"], (
        f"torch {df['torch']} outside pyproject's range"
    )
    assert re.fullmatch(r"cu\d{3}", df["torch_cuda"]), "TORCH_CUDA must name a CUDA wheel index"
    assert re.search(r'"torch==\$\{TORCH_VERSION\}"', df["text"])
    assert '--index-url "https://download.pytorch.org/whl/${TORCH_CUDA}"' in df["text"]


def test_dockerfile_copies_what_exists_and_is_not_ignored() -> None:
    text = _dockerfile()["text"]
    sources = [
        s
        for line in re.findall(r"^COPY\s+(?:--\S+\s+)*(.+)$", text, re.MULTILINE)
        for s in line.split()[:-1]
    ]
    assert {"pyproject.toml", "iic_survey", "jobs"} <= set(sources)
    lines = (CLUSTER / "Dockerfile.dockerignore").read_text().splitlines()
    ignore = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*", "the ignore file must exclude everything first, then re-include"
    for source in sources:
        assert f"!{source}" in ignore or f"!{source}/**" in ignore, f"{source} is docker-ignored"
    missing = [s for s in sources if not (REPO / s).exists()]
    if missing:
        pytest.skip(f"not written yet (docker build would fail): {missing}")


# -- every YAML parses; no credentials anywhere ------------------------------------------------


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(CLUSTER)))
def test_yaml_parses(path: pathlib.Path) -> None:
    docs = list(yaml.safe_load_all(path.read_text()))
    assert docs and all(isinstance(d, dict) for d in docs)


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def test_no_credentials_in_cluster_files() -> None:
    for path in sorted(p for p in CLUSTER.rglob("*") if p.is_file()):
        text = path.read_text()
        assert not re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", text), f"AWS key id in {path.name}"
        assert not re.search(r"(?i)aws_secret_access_key\s*[:=]\s*['\"]?[A-Za-z0-9/+]{20,}", text)
    for path in MANIFESTS:
        for node in _walk(_load(path)):
            if "name" in node and "value" in node and CREDENTIAL_NAME.search(str(node["name"])):
                pytest.fail(f"{path.name}: {node['name']} is inline; use a secretKeyRef or envFrom")


# -- KubeRay manifests against the CRDs' openAPIV3Schema ----------------------------------------


def _to_json_schema(node: dict[str, Any]) -> dict[str, Any]:
    """Translate a Kubernetes structural schema into JSON Schema, as an API server applies it.

    Unknown fields are errors (kubectl's default ``--validate=strict``); ``nullable`` and
    ``x-kubernetes-int-or-string`` become JSON Schema types; list-type ``set``/``map`` become
    uniqueness checks; CEL rules (``x-kubernetes-validations``) cannot be evaluated here, so a
    manifest that sets such a field fails with a message saying so.
    """
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: _to_json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = _to_json_schema(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [_to_json_schema(sub) for sub in value]
        elif key == "x-kubernetes-list-type" and value == "set":
            out["uniqueItems"] = True
        elif key == "x-kubernetes-list-map-keys":
            out["x-list-map-keys"] = value
        elif key == "x-kubernetes-validations":
            out["x-cel-rules"] = [rule["rule"] for rule in value]
        elif not (key.startswith("x-kubernetes-") or key == "nullable"):
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _list_map_keys(validator: Any, keys: list[str], instance: Any, schema: Any) -> Iterator[Any]:
    if not isinstance(instance, list):
        return
    seen: set[tuple[Any, ...]] = set()
    for item in instance:
        key = tuple(json.dumps(item.get(k)) for k in keys) if isinstance(item, dict) else ()
        if key in seen:
            yield jsonschema.ValidationError(f"duplicate list-map key {keys} = {key}")
        seen.add(key)


def _cel_rules(validator: Any, rules: list[str], instance: Any, schema: Any) -> Iterator[Any]:
    yield jsonschema.ValidationError(
        f"this field carries CEL rules the test cannot evaluate ({rules}); check them by hand "
        "with `kubectl apply --dry-run=server` and extend tests/integration/test_cluster.py"
    )


_K8sValidator = jsonschema.validators.extend(
    jsonschema.Draft7Validator, {"x-list-map-keys": _list_map_keys, "x-cel-rules": _cel_rules}
)


@pytest.fixture(scope="module")
def crd_validators(shared_data: pathlib.Path) -> dict[tuple[str, str], Any]:
    """(kind, apiVersion) -> validator, from the KubeRay CRDs in the shared reference data."""
    validators = {}
    for kind, name in CRD_FILES.items():
        crd = _load(shared_data / "kuberay" / name)
        assert crd["spec"]["names"]["kind"] == kind
        for version in crd["spec"]["versions"]:
            if version["served"]:
                schema = _to_json_schema(version["schema"]["openAPIV3Schema"])
                api_version = f"{crd['spec']['group']}/{version['name']}"
                validators[kind, api_version] = _K8sValidator(schema)
    return validators


def test_schema_translation_rejects_what_an_api_server_rejects(crd_validators: dict) -> None:
    good = _load(CLUSTER / "kuberay" / "raycluster.yaml")
    validator = crd_validators["RayCluster", "ray.io/v1"]
    assert not list(validator.iter_errors(good))
    bad_edits = {
        "unknown field": lambda m: m["spec"].update(rayStartParam={}),
        "int rayStartParams": lambda m: m["spec"]["headGroupSpec"]["rayStartParams"].update(
            {"num-cpus": 0}
        ),
        "bad quantity": lambda m: m["spec"]["workerGroupSpecs"][0]["template"]["spec"][
            "containers"
        ][0]["resources"]["limits"].update(memory="56 GB"),
        "duplicate container": lambda m: m["spec"]["headGroupSpec"]["template"]["spec"][
            "containers"
        ].append(m["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]),
        "CEL field": lambda m: m["spec"].update(managedBy="ray.io/kuberay-operator"),
        "string replicas": lambda m: m["spec"]["workerGroupSpecs"][0].update(maxReplicas="64"),
    }
    for what, edit in bad_edits.items():
        manifest = copy.deepcopy(good)
        edit(manifest)
        assert list(validator.iter_errors(manifest)), f"{what} was accepted"


def _cluster_specs(manifest: dict[str, Any]) -> dict[str, Any]:
    return (
        manifest["spec"] if manifest["kind"] == "RayCluster" else manifest["spec"]["rayClusterSpec"]
    )


def _groups(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    yield "head", spec["headGroupSpec"]
    for group in spec.get("workerGroupSpecs", []):
        yield group["groupName"], group


_QUANTITY = re.compile(r"(\d+(?:\.\d+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?")
_SCALE = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
_SCALE.update({f"{p}i": 2.0 ** (10 * (i + 1)) for i, p in enumerate("KMGTPE")})


def _quantity(value: Any) -> float:
    match = _QUANTITY.fullmatch(str(value))
    if match is None:
        pytest.fail(f"quantity {value!r}: write it as a plain number with an SI or binary suffix")
    return float(match[1]) * _SCALE[match[2]]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_against_kuberay_crd(path: pathlib.Path, crd_validators: dict) -> None:
    manifest = _load(path)
    assert manifest.get("apiVersion") == "ray.io/v1", "use the storage version ray.io/v1"
    validator = crd_validators[manifest["kind"], manifest["apiVersion"]]
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(manifest)
    ]
    assert not errors, "\n".join(errors)
    assert re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", manifest["metadata"]["name"])


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_cluster_shape(path: pathlib.Path) -> None:
    """What the CRD schema cannot say: Ray, scheduling and pod rules this project relies on."""
    manifest = _load(path)
    spec = _cluster_specs(manifest)
    image = f":{_expected_tag()}"
    assert spec["rayVersion"] == _pins()["ray"], "rayVersion differs from pyproject's ray pin"
    assert spec["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0", "head must run no tasks"
    assert spec.get("enableInTreeAutoscaling") is True
    gpu_groups, cpu_groups = 0, 0
    for name, group in _groups(spec):
        if name != "head":
            assert 0 <= group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]
            assert group["maxReplicas"] > 0, f"group {name} can never start"
        pod = group["template"]["spec"]
        ray_container = pod["containers"][0]
        assert ray_container["image"].endswith(image), f"{name}: image tag must be ...{image}"
        limits, requests = (
            ray_container["resources"]["limits"],
            ray_container["resources"]["requests"],
        )
        for resource in ("cpu", "memory"):
            assert _quantity(requests[resource]) <= _quantity(limits[resource]), (
                f"{name} {resource}"
            )
        if "nvidia.com/gpu" in limits:
            gpu_groups += 1
            assert limits["nvidia.com/gpu"] == requests.get("nvidia.com/gpu"), (
                "GPUs: requests = limits"
            )
            assert any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", []))
        elif name != "head":
            cpu_groups += 1
        shm = [m for m in ray_container.get("volumeMounts", []) if m["mountPath"] == "/dev/shm"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        assert shm and volumes[shm[0]["name"]].get("emptyDir", {}).get("medium") == "Memory", (
            f"{name}: Ray's object store needs a memory-backed /dev/shm"
        )
        secrets = [
            e["secretRef"]["name"] for e in ray_container.get("envFrom", []) if "secretRef" in e
        ]
        assert secrets == [SECRET_NAME], f"{name}: S3 credentials come from envFrom {SECRET_NAME}"
    assert gpu_groups >= 1, "no GPU worker group"
    if "train" not in path.name:
        assert cpu_groups >= 1, "no CPU worker group for the cutout stages"


@pytest.mark.parametrize("path", [p for p in MANIFESTS if "rayjob" in p.name], ids=lambda p: p.name)
def test_rayjob_lifecycle_and_runtime_env(path: pathlib.Path) -> None:
    from ray.runtime_env import RuntimeEnv

    spec = _load(path)["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["working_dir"] == _dockerfile()["workdir"], "working_dir is not the image's"
    assert not any(CREDENTIAL_NAME.search(k) for k in runtime_env.get("env_vars", {}))
    # The image's working directory is this repository; Ray validates the rest of the env.
    RuntimeEnv(**{**runtime_env, "working_dir": str(REPO)})


# -- the cluster launcher --------------------------------------------------------------------


_G_GPUS = {
    "xlarge": 1,
    "2xlarge": 1,
    "4xlarge": 1,
    "8xlarge": 1,
    "16xlarge": 1,
    "12xlarge": 4,
    "24xlarge": 4,
    "48xlarge": 8,
}  # g5 and g6 instance sizes


def _vcpus(instance_type: str) -> int:
    size = instance_type.split(".")[1]
    return 2 if size == "large" else 4 * int(size.removesuffix("xlarge") or 1)


def test_launcher_validates_against_ray_schema() -> None:
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _load(LAUNCHER)
    schema_path = pathlib.Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    jsonschema.validate(config, json.loads(schema_path.read_text()))
    validate_config(prepare_config(copy.deepcopy(config)))  # what `ray up` does before AWS calls


def test_launcher_cluster_shape() -> None:
    config = _load(LAUNCHER)
    assert config["provider"]["type"] == "aws" and config["provider"]["region"] == "us-west-2"
    assert config["docker"]["image"].endswith(f":{_expected_tag()}")
    assert f"= {_pins()['ray']}" in " ".join(config["setup_commands"]), "setup check drifted"
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "the head must run no tasks"
    assert not head["node_config"]["InstanceType"].startswith(("g", "p")), "CPU head"
    families = {name: t["node_config"]["InstanceType"].split(".")[0] for name, t in types.items()}
    gpu = [n for n, f in families.items() if f in ("g5", "g6")]
    cpu = [n for n, f in families.items() if f in ("c7i", "m7i") and n != config["head_node_type"]]
    assert gpu and cpu, f"need g5/g6 GPU workers and c7i/m7i CPU workers, got {families}"
    for name in gpu + cpu:
        instance, resources = types[name]["node_config"]["InstanceType"], types[name]["resources"]
        assert resources.get("CPU", 0) <= _vcpus(instance), f"{name}: more CPUs than {instance}"
        expected_gpus = _G_GPUS[instance.split(".")[1]] if name in gpu else 0
        assert resources.get("GPU", 0) == expected_gpus, f"{name}: GPU count of {instance}"
    assert sum(t.get("max_workers", 0) for t in types.values()) <= config["max_workers"]


# -- command lines: the jobs exist and accept them -------------------------------------------


def _readme_commands() -> list[str]:
    if not README.exists():
        return []
    text = README.read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip().startswith("ray job submit")]


def _commands() -> list[tuple[str, list[str]]]:
    found = [(p.name, _load(p)["spec"]["entrypoint"]) for p in MANIFESTS if "rayjob" in p.name]
    found += [(f"README.md:{i}", c) for i, c in enumerate(_readme_commands())]
    commands = []
    for where, line in found:
        tokens = shlex.split(line)
        commands.append((where, tokens[tokens.index("--") + 1 :] if "--" in tokens else tokens))
    return commands


def _flag(tokens: list[str], name: str, default: str | None = None) -> str | None:
    return tokens[tokens.index(name) + 1] if name in tokens else default


def test_readme_has_launcher_commands_and_names_real_files() -> None:
    text = README.read_text()
    for command in ("ray up cluster/aws.yaml", "ray down cluster/aws.yaml", "ray job submit"):
        assert command in text
    for ref in set(re.findall(r"\bcluster/[\w./-]+\.(?:ya?ml|md)\b|\bcluster/Dockerfile\b", text)):
        assert (REPO / ref).exists(), f"README names {ref}, which does not exist"
    assert len(_readme_commands()) >= 2


@pytest.mark.parametrize("where,tokens", _commands(), ids=[w for w, _ in _commands()])
def test_command_line_parses_with_the_job(
    where: str, tokens: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert tokens[0] in ("python", "python3") and tokens[1].startswith("jobs/"), tokens[:2]
    job = REPO / tokens[1]
    if not job.exists():
        pytest.skip(f"{tokens[1]} is not written yet")
    module = load_job(job)
    assert hasattr(module, "build_parser"), f"{tokens[1]} must expose build_parser()"
    try:
        module.build_parser().parse_args(tokens[2:])
    except SystemExit:
        pytest.fail(f"{where}: {tokens[1]} rejects its arguments:\n{capsys.readouterr().err}")


def test_job_parallelism_fits_the_gpu_groups() -> None:
    for path in (p for p in MANIFESTS if "rayjob" in p.name):
        manifest = _load(path)
        tokens = shlex.split(manifest["spec"]["entrypoint"])
        gpus = sum(
            g["maxReplicas"]
            * int(
                g["template"]["spec"]["containers"][0]["resources"]["limits"].get(
                    "nvidia.com/gpu", 0
                )
            )
            for _, g in _groups(_cluster_specs(manifest))
            if "maxReplicas" in g
        )
        if tokens[1] == "jobs/classify_sky.py":
            wanted = int(_flag(tokens, "--inference-actors", "1")) * float(
                _flag(tokens, "--num-gpus-per-actor", "1")
            )
        else:
            wanted = (
                int(_flag(tokens, "--num-workers", "1"))
                if _flag(tokens, "--use-gpu") != "no"
                else 0
            )
        assert wanted <= gpus, f"{path.name} asks for {wanted} GPUs, its cluster has at most {gpus}"
