"""deploy/k8s as `kubectl apply -k` would send it: the kustomizations rendered (resources, namespace,
images), every object validated against the Kubernetes 1.30 OpenAPI schemas (kubernetes-validate,
strict: unknown fields are errors), and cross-checked with the code: the ConfigMap and the Secret
template load as a valid latigo config, the Gordo Role grants exactly the calls latigo makes, the pods
run as the image's user, the migration Job is named for the release the images point at.

kustomize itself is not installed here (it is on no registry this machine reaches); `render` does the
part of it these kustomizations use and refuses any other kustomization field, so a new one cannot be
ignored silently.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from latigo import __version__
from latigo.config import load_config

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
GORDO_ACCESS = K8S / "gordo-access"
SECRET_TEMPLATE = K8S / "secret.template.yaml"
KUBERNETES_VERSION = "1.30.0"
"""The Kubernetes release the manifests are checked against (AKS supports it; kubernetes-validate has it)."""

RENDERED_FIELDS = {"apiVersion", "kind", "namespace", "resources", "images"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PersistentVolume",
                  "StorageClass", "PriorityClass"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}


# ---------------------------------------------------------------- rendering


def kustomization(directory: Path) -> dict[str, Any]:
    return yaml.safe_load((directory / "kustomization.yaml").read_text())


def render(directory: Path) -> list[dict[str, Any]]:
    """The objects of a kustomization, as kustomize builds them (for the fields in RENDERED_FIELDS)."""
    spec = kustomization(directory)
    unknown = set(spec) - RENDERED_FIELDS
    assert not unknown, f"{directory}/kustomization.yaml: render() does not implement {sorted(unknown)}"
    documents: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        path = directory / entry
        if path.is_dir():
            documents += render(path)
        else:
            documents += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    documents = copy.deepcopy(documents)
    if namespace := spec.get("namespace"):
        for doc in documents:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = namespace
    for image in spec.get("images", []):
        for container in containers(documents):
            name, tag = split_image(container["image"])
            if name == image["name"]:
                new = image.get("newName", name)
                container["image"] = f"{new}@{image['digest']}" if "digest" in image else \
                    f"{new}:{image.get('newTag', tag)}"
    return documents


def split_image(reference: str) -> tuple[str, str]:
    name, _, tag = reference.rpartition(":") if ":" in reference.rsplit("/", 1)[-1] else (reference, "", "")
    return name, tag


def containers(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found = []
    for doc in documents:
        if doc["kind"] in WORKLOADS:
            spec = doc["spec"]["template"]["spec"]
            found += spec.get("containers", []) + spec.get("initContainers", [])
    return found


def of_kind(documents: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in documents if doc["kind"] == kind]


def one(documents: list[dict[str, Any]], kind: str, name_part: str = "") -> dict[str, Any]:
    (found,) = [doc for doc in of_kind(documents, kind) if name_part in doc["metadata"]["name"]]
    return found


APP = render(K8S)
ACCESS = render(GORDO_ACCESS)
SECRET = yaml.safe_load(SECRET_TEMPLATE.read_text())
CONFIG_TEXT = one(APP, "ConfigMap")["data"]["config.yaml"]
CONFIG = yaml.safe_load(CONFIG_TEXT)


# ---------------------------------------------------------------- the schemas


@pytest.mark.parametrize(
    "doc", [pytest.param(d, id=f"{d['kind']}/{d['metadata']['name']}") for d in [*APP, *ACCESS, SECRET]])
def test_every_object_is_valid_for_the_pinned_kubernetes_version(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_validator_does_reject_a_broken_object() -> None:
    broken = copy.deepcopy(one(APP, "Deployment", "executor"))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    misspelt = copy.deepcopy(one(APP, "Job"))
    misspelt["spec"]["ttlSecondsAfterFinish"] = misspelt["spec"].pop("ttlSecondsAfterFinished")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, KUBERNETES_VERSION, strict=True)


def test_every_manifest_file_is_part_of_a_kustomization_or_the_secret_template() -> None:
    listed = {K8S / entry for entry in kustomization(K8S)["resources"]}
    listed |= {GORDO_ACCESS / entry for entry in kustomization(GORDO_ACCESS)["resources"]}
    files = {p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml"}
    assert files - listed == {SECRET_TEMPLATE}, "a manifest that `kubectl apply -k` would not apply"
    assert SECRET_TEMPLATE not in listed, "apply -k must never overwrite the real Secret with the template"


# ---------------------------------------------------------------- namespace, images, release


def test_everything_lands_in_latigos_namespace_which_is_created() -> None:
    namespace = kustomization(K8S)["namespace"]
    assert one(APP, "Namespace")["metadata"]["name"] == namespace
    for doc in APP:
        if doc["kind"] not in CLUSTER_SCOPED:
            assert doc["metadata"]["namespace"] == namespace, doc["metadata"]["name"]


def test_the_images_point_every_container_at_this_release() -> None:
    (image,) = kustomization(K8S)["images"]
    assert image["newTag"] == __version__, "a release sets images[].newTag in deploy/k8s/kustomization.yaml"
    for container in containers(APP):
        assert container["image"] == f"{image['newName']}:{image['newTag']}", container["name"]


def test_the_migration_job_is_a_new_job_per_release() -> None:
    job = one(APP, "Job")
    (image,) = kustomization(K8S)["images"]
    assert job["metadata"]["name"] == f"latigo-migrate-{image['newTag']}", \
        "the Job's name ends with the release's tag (a Job's pod template is immutable)"
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert job["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


# ---------------------------------------------------------------- pods


def dockerfile_uid() -> int:
    match = re.search(r"useradd[^\n]*--uid (\d+)", (ROOT / "Dockerfile").read_text())
    assert match, "the Dockerfile creates its user with useradd --uid"
    return int(match.group(1))


@pytest.mark.parametrize("workload", ["latigo-scheduler", "latigo-executor", "latigo-migrate"])
def test_pods_run_as_the_images_user_under_the_restricted_pod_security_standard(workload: str) -> None:
    (doc,) = [d for d in APP if d["kind"] in WORKLOADS and d["metadata"]["name"].startswith(workload)]
    pod = doc["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == dockerfile_uid()
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod["containers"]:
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert one(APP, "Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_the_long_running_pods_use_latigos_service_account() -> None:
    account = one(APP, "ServiceAccount")["metadata"]["name"]
    for name in ("scheduler", "executor"):
        assert one(APP, "Deployment", name)["spec"]["template"]["spec"]["serviceAccountName"] == account


# ---------------------------------------------------------------- Gordo access


def gordo_calls() -> set[tuple[str, str]]:
    """(resource, verb) of every Kubernetes API call latigo's Gordo registration makes."""
    source = (ROOT / "latigo" / "models" / "gordo_kubernetes.py").read_text()
    calls = re.findall(r'self\.http\.request\(\s*"(\w+)",\s*self\.(\w+)_url', source)
    assert calls, "no Kubernetes calls found in gordo_kubernetes.py: update gordo_calls()"
    verbs = {("GET", "gordo"): ("gordos", "get"), ("PATCH", "gordo"): ("gordos", "patch"),
             ("POST", "gordos"): ("gordos", "create"), ("GET", "gordos"): ("gordos", "list"),
             ("GET", "models"): ("models", "list"),
             ("GET", "model"): ("models", "get"), ("PUT", "gordo"): ("gordos", "update"),
             ("DELETE", "gordo"): ("gordos", "delete")}
    unknown = [call for call in calls if call not in verbs]
    assert not unknown, f"Kubernetes calls this test cannot map to RBAC verbs: {unknown}"
    return {verbs[call] for call in calls}


def test_the_gordo_role_grants_the_calls_latigo_makes_in_gordos_namespace() -> None:
    role = one(ACCESS, "Role")
    granted = {(resource, verb) for rule in role["rules"] if rule["apiGroups"] == ["equinor.com"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    assert gordo_calls() <= granted
    assert {r for r, _ in granted} <= {"gordos", "models"}, "nothing beyond Gordo's resources"
    assert not any(verb in ("delete", "deletecollection", "*") for _, verb in granted)
    gordo_namespace = kustomization(GORDO_ACCESS)["namespace"]
    for section in ("model_information", "model_execution"):
        if CONFIG[section]["type"] == "gordo":
            assert CONFIG[section]["kubernetes_namespace"] == gordo_namespace, section
            assert f".{gordo_namespace}.svc" in CONFIG[section]["base_url"], section


def test_the_gordo_role_binding_names_latigos_service_account() -> None:
    binding = one(ACCESS, "RoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": one(ACCESS, "Role")["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": one(APP, "ServiceAccount")["metadata"]["name"],
                                    "namespace": kustomization(K8S)["namespace"]}]
    assert binding["metadata"]["namespace"] == one(ACCESS, "Role")["metadata"]["namespace"]


# ---------------------------------------------------------------- config and secrets


def load_production_config(tmp_path: Path, config: dict[str, Any] | str, secrets: dict[str, str]) -> Any:
    path = tmp_path / "config.yaml"
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    return load_config(path, env={"LATIGO_CONFIG_FILE": str(path), **secrets})


def test_the_configmap_and_the_secret_template_make_a_valid_production_config(tmp_path: Path) -> None:
    config = load_production_config(tmp_path, CONFIG_TEXT, SECRET["stringData"])
    assert config.database.url.startswith("postgresql://")
    assert config.task_queue.type == "eventhub" and config.task_queue.settings.connection_string
    assert config.sensor_data.type == "influx" and config.sensor_data.settings.password
    for section in ("model_information", "model_execution"):
        component = getattr(config, section)
        assert component.type == "gordo"
        assert component.settings.client_secret and component.settings.tenant and component.settings.scope


def test_no_secret_value_is_in_the_configmap() -> None:
    for line in CONFIG_TEXT.splitlines():
        if not line.strip().startswith("#"):
            assert not re.search(r"\b(password|client_secret|connection_string|subscription_key|url):", line), line


def test_the_secret_templates_data_api_alternative_is_a_valid_config_too(tmp_path: Path) -> None:
    """The commented Data API block of the ConfigMap with the commented Data API keys of the template."""
    lines = CONFIG_TEXT.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"\s*# type: data_api", line))
    block = []
    for line in lines[start:]:
        if not line.strip().startswith("# "):
            break
        block.append(line.strip()[2:])
    data_api = yaml.safe_load("\n".join(block))
    commented = dict(re.findall(r"^\s*# (LATIGO_SENSOR_DATA__\w+): (\S+)", SECRET_TEMPLATE.read_text(), re.M))
    assert commented, "the template shows the Data API's secret keys"
    secrets = {k: v for k, v in SECRET["stringData"].items() if k != "LATIGO_SENSOR_DATA__PASSWORD"} | commented
    config = load_production_config(tmp_path, {**CONFIG, "sensor_data": data_api}, secrets)
    assert config.sensor_data.type == "data_api"
    assert config.sensor_data.settings.client_secret and config.sensor_data.settings.subscription_key


# ---------------------------------------------------------------- the guide


def test_the_k8s_readme_covers_applying_secrets_gordo_access_releases_and_scaling() -> None:
    text = (K8S / "README.md").read_text()
    for needed in ("kubectl apply -k deploy/k8s", "secret.template.yaml", "gordo-access", "partition",
                   "latigo-migrate-", "newTag"):
        assert needed in text, needed
