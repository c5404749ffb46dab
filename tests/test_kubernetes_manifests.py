"""deploy/kubernetes checked offline: every core resource against the Kubernetes OpenAPI schemas in
strict mode (kubernetes-validate), the KubeRay RayJob against a description of KubeRay's documented
ray.io/v1 fields with its pod templates as core PodTemplates, and all of it against the project:
images the Dockerfile builds, probe paths the real serve app routes, flags the real `retrain` and
`serve` commands parse, claims storage.yaml defines, and serve serving every model in the folder
the RayJob exports into. No cluster is needed (nor used): this cannot show that the manifests run.
"""

from __future__ import annotations

import asyncio
import copy
import re
import shlex
from pathlib import Path, PurePosixPath
from typing import Any

import click
import httpx
import kubernetes_validate
import kubernetes_validate.utils
import pytest
import yaml

from retrain.cli import main as retrain_command
from serve.cli import main as serve_command

from .conftest import REPO, TIMEOUT
from .dockerfile_stages import Dockerfile

DEPLOY = REPO / "deploy" / "kubernetes"
# The newest Kubernetes whose schemas kubernetes-validate 1.37.0 ships; strict: unknown fields fail.
KUBERNETES_VERSION = "1.37.0"
RAY_KIND = "ray.io/v1", "RayJob"
RAY_ADDRESS = "--ray_address"
# A resource.Quantity: a decimal number with a binary (Ki..Ei), decimal (m, k..E) or exponent suffix.
QUANTITY = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([KMGTPE]i|[mkMGTPE]|[eE][+-]?\d+)?")

# KubeRay's ray.io/v1 RayJob, as its API reference and Go types (rayjob_types.go,
# raycluster_types.go) document it: field -> the Python type YAML gives it, plus what is required.
RAYJOB_SPEC = {
    "activeDeadlineSeconds": int,
    "backoffLimit": int,
    "rayClusterSpec": dict,
    "submitterPodTemplate": dict,
    "metadata": dict,
    "clusterSelector": dict,
    "submitterConfig": dict,
    "managedBy": str,
    "deletionStrategy": dict,
    "entrypoint": str,
    "runtimeEnvYAML": str,
    "jobId": str,
    "submissionMode": str,
    "entrypointResources": str,
    "entrypointNumCpus": float,
    "entrypointNumGpus": float,
    "ttlSecondsAfterFinished": int,
    "shutdownAfterJobFinishes": bool,
    "suspend": bool,
    "schedule": str,
}
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode"}
RAYCLUSTER_SPEC = {
    "headGroupSpec": dict,
    "workerGroupSpecs": list,
    "rayVersion": str,
    "enableInTreeAutoscaling": bool,
    "autoscalerOptions": dict,
    "headServiceAnnotations": dict,
    "suspend": bool,
    "gcsFaultToleranceOptions": dict,
    "authOptions": dict,
}
HEAD_GROUP_SPEC = {
    "serviceType": str,
    "headService": dict,
    "enableIngress": bool,
    "rayStartParams": dict,
    "template": dict,
}
WORKER_GROUP_SPEC = {
    "groupName": str,
    "replicas": int,
    "minReplicas": int,
    "maxReplicas": int,
    "numOfHosts": int,
    "rayStartParams": dict,
    "template": dict,
    "scaleStrategy": dict,
}
REQUIRED = {
    "spec": {"entrypoint", "rayClusterSpec"},
    "rayClusterSpec": {"headGroupSpec"},
    "headGroupSpec": {"rayStartParams", "template"},
    "workerGroupSpecs": {"groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"},
}


# --- loading --------------------------------------------------------------------------------------


def load_documents() -> list[tuple[str, dict]]:
    """(file name, resource) for every YAML document in deploy/kubernetes/*.yaml, in file order."""
    documents = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        with path.open() as f:
            documents += [(path.name, document) for document in yaml.safe_load_all(f) if document is not None]
    return documents


DOCUMENTS = load_documents()


def is_ray(resource: dict) -> bool:
    return resource["apiVersion"].split("/")[0].endswith("ray.io")


def ident(resource: dict) -> str:
    return f"{resource['kind']}/{resource['metadata']['name']}"


def find(kind: str) -> list[dict]:
    return [resource for _, resource in DOCUMENTS if resource["kind"] == kind]


def one(kind: str, name: str | None = None) -> dict:
    matches = [resource for resource in find(kind) if name is None or resource["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


@pytest.fixture(scope="session", autouse=True)
def prebuilt_feature_models() -> None:
    """Overrides conftest's fixture of that name for this module: nothing here runs a backbone, so
    it need not import TensorFlow and convert one (5 s)."""


@pytest.fixture(scope="module")
def rayjob() -> dict:
    return one("RayJob")


@pytest.fixture(scope="module")
def deployment() -> dict:
    return one("Deployment", "serve")


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return Dockerfile.parse(REPO / "Dockerfile")


def ray_pod_templates(rayjob: dict) -> dict[str, dict]:
    """'head' and each worker group's name -> its pod template."""
    cluster = rayjob["spec"]["rayClusterSpec"]
    templates = {"head": cluster["headGroupSpec"]["template"]}
    templates.update({group["groupName"]: group["template"] for group in cluster.get("workerGroupSpecs", [])})
    return templates


def all_pod_specs() -> dict[str, dict]:
    specs = {f"RayJob {name}": template["spec"] for name, template in ray_pod_templates(one("RayJob")).items()}
    specs.update({ident(d): d["spec"]["template"]["spec"] for d in find("Deployment")})
    return specs


def containers(pod_spec: dict) -> list[dict]:
    return [*pod_spec.get("initContainers", []), *pod_spec["containers"]]


def mounted_claim(pod_spec: dict, container: dict, path: str) -> tuple[str, PurePosixPath, bool]:
    """(claim name, path inside the volume, read-only) of the PVC that holds `path` in `container`."""
    volumes = {volume["name"]: volume for volume in pod_spec.get("volumes", [])}
    target = PurePosixPath(path)
    best = None
    for mount in container.get("volumeMounts", []):
        mount_path = PurePosixPath(mount["mountPath"])
        if (target == mount_path or mount_path in target.parents) and (
            best is None or len(mount_path.parts) > len(PurePosixPath(best["mountPath"]).parts)
        ):
            best = mount
    assert best is not None, f"{container['name']}: nothing is mounted at {path}"
    source = volumes[best["name"]].get("persistentVolumeClaim")
    assert source, f"{container['name']}: {path} is on volume {best['name']}, not a PersistentVolumeClaim"
    read_only = bool(best.get("readOnly")) or bool(source.get("readOnly"))
    return source["claimName"], target.relative_to(best["mountPath"]), read_only


def cpu_cores(quantity: str | int | float) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


# --- the files and the core schemas ----------------------------------------------------------------


def test_the_manifests_hold_the_expected_resources() -> None:
    by_file: dict[str, list[str]] = {}
    for name, resource in DOCUMENTS:
        by_file.setdefault(name, []).append(resource["kind"])
    assert by_file == {
        "rayjob-retrain.yaml": ["RayJob"],
        "serve.yaml": ["Deployment", "Service", "HorizontalPodAutoscaler"],
        "storage.yaml": ["PersistentVolumeClaim"] * 3,
    }
    assert {r["apiVersion"] for _, r in DOCUMENTS if r["kind"] == "HorizontalPodAutoscaler"} == {"autoscaling/v2"}
    assert one("RayJob")["apiVersion"] == RAY_KIND[0]


def test_the_pinned_kubernetes_version_is_one_kubernetes_validate_ships() -> None:
    assert KUBERNETES_VERSION in kubernetes_validate.utils.all_versions()
    assert kubernetes_validate.latest_version() == KUBERNETES_VERSION, (
        "kubernetes-validate now ships newer schemas: move KUBERNETES_VERSION on deliberately"
    )


@pytest.mark.parametrize(
    "resource",
    [resource for _, resource in DOCUMENTS if not is_ray(resource)],
    ids=lambda resource: ident(resource),
)
def test_each_core_resource_validates_strictly(resource: dict) -> None:
    assert kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True) == "1.37"


def test_strict_validation_rejects_unknown_fields_and_wrong_types(deployment: dict) -> None:
    misspelt = copy.deepcopy(deployment)
    misspelt["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinessProbes"):
        kubernetes_validate.validate(misspelt, KUBERNETES_VERSION, strict=True)
    mistyped = copy.deepcopy(deployment)
    mistyped["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(mistyped, KUBERNETES_VERSION, strict=True)


def quantities(node: Any, where: str = "") -> list[tuple[str, Any]]:
    """(path, value) of every resource quantity (requests and limits) anywhere in `node`."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("requests", "limits") and isinstance(value, dict):
                found += [(f"{where}.{key}.{name}", amount) for name, amount in value.items()]
            else:
                found += quantities(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            found += quantities(item, f"{where}[{i}]")
    return found


def test_every_resource_quantity_is_a_kubernetes_quantity() -> None:
    """The schemas type a quantity as any string: its syntax is checked here (the API server's)."""
    found = [(f"{ident(resource)}{path}", value) for _, resource in DOCUMENTS for path, value in quantities(resource)]
    assert len(found) >= 3 + 4 * 3  # the three claims; requests and limits of cpu and memory in three pods
    for path, value in found:
        assert QUANTITY.fullmatch(str(value)), f"{path}: {value!r} is not a quantity"
    assert not QUANTITY.fullmatch("lots") and not QUANTITY.fullmatch("5GB") and QUANTITY.fullmatch("500m")


# --- the RayJob against KubeRay's fields -----------------------------------------------------------


def _type_problems(where: str, values: dict, fields: dict[str, type], required: set[str]) -> list[str]:
    problems = [f"{where}: unknown field {key!r}" for key in values if key not in fields]
    problems += [f"{where}: missing {key!r}" for key in sorted(required - set(values))]
    for key, value in values.items():
        kind = fields.get(key)
        if kind is None:
            continue
        if kind is float:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, kind)
        if not ok:
            problems.append(f"{where}.{key}: {value!r} is not of type {kind.__name__}")
    return problems


def rayjob_problems(rayjob: dict) -> list[str]:
    """What KubeRay's ray.io/v1 RayJob would reject or ignore in `rayjob` (pod templates aside)."""
    problems = _type_problems("RayJob", rayjob, {"apiVersion": str, "kind": str, "metadata": dict, "spec": dict}, set())
    if (rayjob.get("apiVersion"), rayjob.get("kind")) != RAY_KIND:
        problems.append(f"not a {RAY_KIND}: {rayjob.get('apiVersion')} {rayjob.get('kind')}")
    spec = rayjob.get("spec", {})
    problems += _type_problems("spec", spec, RAYJOB_SPEC, REQUIRED["spec"])
    if spec.get("submissionMode", "K8sJobMode") not in SUBMISSION_MODES:
        problems.append(f"spec.submissionMode: {spec['submissionMode']!r} is none of {sorted(SUBMISSION_MODES)}")
    for key in ("activeDeadlineSeconds", "backoffLimit", "ttlSecondsAfterFinished"):
        if isinstance(spec.get(key), int) and spec[key] < (1 if key == "activeDeadlineSeconds" else 0):
            problems.append(f"spec.{key}: {spec[key]} is out of range")
    cluster = spec.get("rayClusterSpec", {})
    problems += _type_problems("rayClusterSpec", cluster, RAYCLUSTER_SPEC, REQUIRED["rayClusterSpec"])
    groups = [("headGroupSpec", cluster.get("headGroupSpec", {}), HEAD_GROUP_SPEC, REQUIRED["headGroupSpec"])]
    groups += [
        (f"workerGroupSpecs[{i}]", group, WORKER_GROUP_SPEC, REQUIRED["workerGroupSpecs"])
        for i, group in enumerate(cluster.get("workerGroupSpecs", []))
    ]
    for where, group, fields, required in groups:
        problems += _type_problems(where, group, fields, required)
        for key, value in group.get("rayStartParams", {}).items():
            if not isinstance(value, str):  # map[string]string: `num-cpus: 0` must be quoted
                problems.append(f"{where}.rayStartParams.{key}: {value!r} is not a string")
    names = [group.get("groupName") for group in cluster.get("workerGroupSpecs", [])]
    if len(set(names)) != len(names):
        problems.append(f"workerGroupSpecs: group names repeat: {names}")
    for i, group in enumerate(cluster.get("workerGroupSpecs", [])):
        low, high = group.get("minReplicas", 0), group.get("maxReplicas", 2**31 - 1)
        if not low <= group.get("replicas", low) <= high:
            problems.append(f"workerGroupSpecs[{i}]: replicas {group.get('replicas')} outside [{low}, {high}]")
    return problems


def test_the_rayjob_uses_only_kuberays_documented_fields(rayjob: dict) -> None:
    assert rayjob_problems(rayjob) == []
    spec = rayjob["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert {"ttlSecondsAfterFinished", "backoffLimit", "activeDeadlineSeconds"} <= set(spec)
    assert spec["rayClusterSpec"]["rayVersion"] == "2.60.0"
    assert len(spec["rayClusterSpec"]["workerGroupSpecs"]) == 1


def test_the_rayjob_check_can_fail(rayjob: dict) -> None:
    broken = copy.deepcopy(rayjob)
    broken["spec"]["shutdownAfterJobsFinish"] = True
    broken["spec"]["rayClusterSpec"]["headGroupSpec"]["replicas"] = 1
    broken["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["rayStartParams"]["num-cpus"] = 2
    broken["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = 99
    del broken["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["groupName"]
    broken["spec"]["backoffLimit"] = "1"
    problems = "\n".join(rayjob_problems(broken))
    for expected in (
        "unknown field 'shutdownAfterJobsFinish'",
        "headGroupSpec: unknown field 'replicas'",
        "num-cpus: 2 is not a string",
        "replicas 99 outside",
        "missing 'groupName'",
        "backoffLimit: '1' is not of type int",
    ):
        assert expected in problems


@pytest.mark.parametrize("group", ["head", "extract"])
def test_each_ray_pod_template_validates_as_a_core_pod_template(rayjob: dict, group: str) -> None:
    template = ray_pod_templates(rayjob)[group]
    wrapped = {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {**rayjob["metadata"], "name": f"{rayjob['metadata']['name']}-{group}"},
        "template": template,
    }
    kubernetes_validate.validate(wrapped, KUBERNETES_VERSION, strict=True)
    ray_container = template["spec"]["containers"][0]  # KubeRay runs `ray start` in the first one
    assert ray_container["image"].rsplit("/", 1)[-1].split(":")[0] == "retrain"
    # KubeRay's own probes exec wget, which python:slim lacks: ours must be there and be HTTP.
    for probe in ("readinessProbe", "livenessProbe"):
        assert "httpGet" in ray_container[probe], f"{group}: {probe} is not an httpGet probe"


def test_a_broken_ray_pod_template_fails_core_validation(rayjob: dict) -> None:
    template = copy.deepcopy(ray_pod_templates(rayjob)["head"])
    template["spec"]["containers"][0]["volumeMount"] = template["spec"]["containers"][0].pop("volumeMounts")
    with pytest.raises(kubernetes_validate.ValidationError, match="volumeMount"):
        wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "x"}, "template": template}
        kubernetes_validate.validate(wrapped, KUBERNETES_VERSION, strict=True)


def test_ray_version_matches_the_projects_ray_pin(rayjob: dict) -> None:
    pins = dict(line.split("==", 1) for line in (REPO / "constraints.txt").read_text().splitlines() if "==" in line)
    assert rayjob["spec"]["rayClusterSpec"]["rayVersion"] == pins["ray"]


# --- images, users and volumes ---------------------------------------------------------------------


def test_every_image_is_a_target_the_dockerfile_builds_and_runs_as_its_user(dockerfile: Dockerfile) -> None:
    for where, pod_spec in all_pod_specs().items():
        for container in containers(pod_spec):
            name = container["image"].rsplit("/", 1)[-1].split("@")[0].split(":")[0]
            assert name in dockerfile.stages, f"{where}: image {container['image']} is no Dockerfile target"
            by_cmd = {command.cmd: command for command in dockerfile.instructions(name)}
            assert "ENTRYPOINT" in by_cmd, f"{where}: {name} is a build stage, not an image to run"
            uid, _, gid = by_cmd["USER"].value[0].partition(":")
            security = pod_spec.get("securityContext", {})
            assert security.get("runAsNonRoot") is True, where
            assert str(security.get("runAsUser")) == uid and str(security.get("runAsGroup")) == gid, where
    assert {c["image"] for c in one("Deployment", "serve")["spec"]["template"]["spec"]["containers"]} == {"serve"}


def test_every_claim_a_pod_mounts_is_defined_in_storage_yaml_and_shared() -> None:
    claims = {pvc["metadata"]["name"]: pvc for pvc in find("PersistentVolumeClaim")}
    assert len(claims) == 3
    for pvc in claims.values():
        assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], ident(pvc)
    used = set()
    for where, pod_spec in all_pod_specs().items():
        for volume in pod_spec.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                name = volume["persistentVolumeClaim"]["claimName"]
                assert name in claims, f"{where}: claim {name} is not in storage.yaml"
                used.add(name)
    assert used == set(claims), f"claims no pod mounts: {set(claims) - used}"


def test_every_ray_pod_mounts_the_same_claims_at_the_same_paths_images_read_only(rayjob: dict) -> None:
    layouts = {}
    for group, template in ray_pod_templates(rayjob).items():
        container = template["spec"]["containers"][0]
        layouts[group] = {
            mount["mountPath"]: mounted_claim(template["spec"], container, mount["mountPath"])[0]
            for mount in container["volumeMounts"]
        }
        assert mounted_claim(template["spec"], container, "/data")[2], f"{group}: images are writable"
        assert not mounted_claim(template["spec"], container, "/cache")[2], f"{group}: the cache is read-only"
    assert len({tuple(sorted(layout.items())) for layout in layouts.values()}) == 1, layouts
    assert sorted(layouts["head"]) == ["/cache", "/data", "/models"]


# --- the entrypoint against the real retrain command ----------------------------------------------


def parse_entrypoint(entrypoint: str) -> click.Context:
    """The RayJob's entrypoint parsed by the real `retrain` command (strictly: unknown flags and bad
    values raise click.UsageError); nothing runs."""
    program, *args = shlex.split(entrypoint)
    assert program == "retrain", f"the entrypoint runs {program}, not retrain"
    return retrain_command.make_context("retrain", args)


def test_the_entrypoint_parses_with_the_real_retrain_command(rayjob: dict) -> None:
    entrypoint = rayjob["spec"]["entrypoint"]
    ctx = parse_entrypoint(entrypoint)
    assert shlex.split(entrypoint)[1:].count(RAY_ADDRESS) == 1
    assert ctx.params["ray_address"] == "auto"
    # Every path it names is on the shared volumes, as the head (the driver) sees them.
    head = ray_pod_templates(rayjob)["head"]["spec"]
    ray_head = head["containers"][0]
    assert mounted_claim(head, ray_head, ctx.params["image_dir"])[0] == "retrain-images"
    claim, _, read_only = mounted_claim(head, ray_head, ctx.params["bottleneck_dir"])
    assert claim == "retrain-bottlenecks" and not read_only
    claim, _, read_only = mounted_claim(head, ray_head, ctx.params["models_dir"])
    assert claim == "retrain-models" and not read_only
    # The default output dir, so each export is the next version of its model in --models_dir
    # (<models_dir>/<model name>/<n>), which serve picks up by name.
    assert ctx.params["output_dir"] is None


def test_the_entrypoint_check_can_fail() -> None:
    with pytest.raises(click.UsageError, match="no_such_flag"):
        parse_entrypoint("retrain --image_dir /data/x --no_such_flag 1 --ray_address auto")
    with pytest.raises(click.UsageError):
        parse_entrypoint("retrain --image_dir /data/x --how_many_training_steps zero --ray_address auto")


# --- serve against the real serve app and command -------------------------------------------------


@pytest.fixture(scope="module")
def serve_app():
    """The real FastAPI app, with no model loaded (a manager waiting for one)."""
    from serve.app import create_app
    from serve.model_info import ModelDirError
    from serve.models.manager import ModelManager
    from serve.models.repository import ModelsDir

    def no_model(name: str, version: int, path: Path):
        raise ModelDirError(f"{path} has no export yet")

    manager = ModelManager(ModelsDir(Path("/nonexistent/models")), no_model)
    manager.reconcile()
    yield create_app(manager)
    manager.close()


def serve_container(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_serve_probes_are_routes_of_the_real_app_on_its_port(deployment: dict, serve_app: Any) -> None:
    container = serve_container(deployment)
    get_routes = {route.path for route in serve_app.routes if "GET" in getattr(route, "methods", ())}
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    for kind, probe in probes.items():
        assert probe["path"] in get_routes, f"{kind}: {probe['path']} is not a GET route of serve"
        assert ports.get(probe["port"], probe["port"]) == 8501, kind
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/healthz"
    # Before any model: alive, not ready (so a pod stays out of the Service until one loads).

    async def status(path: str) -> int:
        transport = httpx.ASGITransport(app=serve_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serve", timeout=TIMEOUT) as client:
            return (await client.get(path)).status_code

    assert asyncio.run(status(probes["livenessProbe"]["path"])) == 200
    assert asyncio.run(status(probes["readinessProbe"]["path"])) == 503


def test_serve_env_and_args_parse_with_the_real_serve_command(
    deployment: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    container = serve_container(deployment)
    env = {item["name"]: item["value"] for item in container["env"]}
    envvars = {param.envvar for param in serve_command.params if param.envvar}
    assert set(env) <= envvars, f"serve reads none of {set(env) - envvars}"
    for name in envvars:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    ctx = serve_command.make_context("serve", list(container.get("args", [])))
    # One Deployment for every model: --models_dir, and none of the single-model modes.
    assert ctx.params["models_dir"] == "/models"
    assert ctx.get_parameter_source("models_dir") == click.core.ParameterSource.ENVIRONMENT
    assert not any(ctx.params[mode] for mode in ("model_dir", "model_base_path", "model_config_file", "model_name"))
    assert ctx.params["wait_for_model"] is True
    assert ctx.params["port"] == 8501
    threads = ctx.params["workers"] * (ctx.params["threads_per_worker"] or 1)
    assert threads <= cpu_cores(container["resources"]["limits"]["cpu"]), "more inference threads than CPUs"
    assert "command" not in container, "the image's `serve` entrypoint must run"


def test_serve_reads_every_model_the_rayjob_exports_read_only(deployment: dict, rayjob: dict) -> None:
    """The RayJob exports into --models_dir (<models_dir>/<name>/<n>); serve serves every model of the
    same folder on the same claim, so each new model or version is served with no change here."""
    pod_spec = deployment["spec"]["template"]["spec"]
    container = serve_container(deployment)
    env = {item["name"]: item["value"] for item in container["env"]}
    assert "SERVE_MODEL_DIR" not in env, "one model per Deployment: serve every model in SERVE_MODELS_DIR"
    serve_claim, serve_path, read_only = mounted_claim(pod_spec, container, env["SERVE_MODELS_DIR"])
    assert read_only, "serve mounts the models volume writable"
    (models_mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/models"]
    assert models_mount.get("readOnly") is True
    ctx = parse_entrypoint(rayjob["spec"]["entrypoint"])
    assert ctx.params["model_name"] is None  # named after --image_dir's folder, as serve will call it
    head = ray_pod_templates(rayjob)["head"]["spec"]
    train_claim, train_path, _ = mounted_claim(head, head["containers"][0], ctx.params["models_dir"])
    assert (serve_claim, serve_path) == (train_claim, train_path)


def test_serve_serves_the_rayjobs_exports_by_their_image_folders_names(
    deployment: dict, rayjob: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where retrain puts the entrypoint's export, and where it puts one of another --image_dir, are
    where serve, started with the Deployment's env and args, finds two models named after the two
    image folders (both volumes rebased under tmp_path)."""
    from retrain.pipeline import RetrainConfig, _export_target
    from serve.cli import _catalog

    def here(path: str) -> str:
        return str(tmp_path / PurePosixPath(path).relative_to("/"))

    params = parse_entrypoint(rayjob["spec"]["entrypoint"]).params
    exports = {}
    for image_dir in (params["image_dir"], str(PurePosixPath(params["image_dir"]).with_name("cars"))):
        config = RetrainConfig(image_dir=here(image_dir), models_dir=here(params["models_dir"]))
        target = _export_target(config).version_dir()
        target.mkdir(parents=True)
        exports[PurePosixPath(image_dir).name] = target
    container = serve_container(deployment)
    for param in serve_command.params:
        if param.envvar:
            monkeypatch.delenv(param.envvar, raising=False)
    for item in container["env"]:
        value = item["value"]
        monkeypatch.setenv(item["name"], here(value) if value.startswith("/") else value)
    ctx = serve_command.make_context("serve", list(container.get("args", [])))
    models = {config.name: config for config in _catalog(ctx, ctx.params).models()}
    assert sorted(models) == sorted(exports) and len(models) == 2
    for name, target in exports.items():
        assert target.relative_to(tmp_path).parts == ("models", name, "1")
        assert _catalog(ctx, ctx.params).versions(models[name]) == {1: target}


def test_serve_security_and_writable_tmp(deployment: dict) -> None:
    pod_spec = deployment["spec"]["template"]["spec"]
    container = serve_container(deployment)
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    volumes = {volume["name"]: volume for volume in pod_spec["volumes"]}
    (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert "emptyDir" in volumes[tmp["name"]] and not tmp.get("readOnly")
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), kind


def test_service_and_autoscaler_point_at_the_serve_deployment(deployment: dict) -> None:
    service = one("Service", "serve")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"].items() <= labels.items()
    ports = {port["name"]: port["containerPort"] for port in serve_container(deployment)["ports"]}
    (port,) = service["spec"]["ports"]
    assert port["port"] == 8501 and ports.get(port["targetPort"], port["targetPort"]) == 8501
    hpa = one("HorizontalPodAutoscaler", "serve")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", "serve")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "Utilization"
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
