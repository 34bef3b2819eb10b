"""Registration and status of Gordo models through a local Kubernetes API (Gordo and Model resources)."""

from __future__ import annotations

import copy
from datetime import timedelta

import pytest
import yaml

from latigo.errors import PermanentError, TransientError, UnknownModelError
from latigo.models.gordo import GordoModels, GordoSettings
from latigo.models.gordo_kubernetes import CONFLICT_ATTEMPTS, resolve_kubernetes, validate_machine
from tests.support.gordo_server import FIXTURES, GordoServer, KubernetesServer, ModelSpec

pytestmark = pytest.mark.integration
NAMESPACE = "kubeflow"


def machine(name: str = "model-new", **changes) -> dict:
    data = {
        "name": name,
        "dataset": {"tags": ["TAG-1", "TAG-2"], "train_start_date": "2026-01-01T00:00:00+00:00",
                    "train_end_date": "2026-01-03T00:00:00Z", "resolution": "10T"},
        "model": {"gordo.machine.model.anomaly.diff.DiffBasedAnomalyDetector": {"base_estimator": "x"}},
        "metadata": {"owner": "latigo"},
    }
    data.update(changes)
    return data


@pytest.fixture
def kube():
    with KubernetesServer(token="kube-token") as server:
        server.put_gordo(NAMESPACE, "demo", [machine("model-a")])
        yield server


@pytest.fixture
def gordo_server():
    with GordoServer() as server:
        yield server


def provider(gordo_server: GordoServer, kube: KubernetesServer, **overrides) -> GordoModels:
    options = {"kubernetes_api_url": kube.url, "kubernetes_token": "kube-token", "kubernetes_namespace": NAMESPACE,
               "retry_base_delay": timedelta(milliseconds=1), "max_retries": 1, **overrides}
    return GordoModels(GordoSettings(base_url=gordo_server.url, project="demo", **options), kubernetes_environ={})


def writes(kube: KubernetesServer) -> list:
    return [r for r in kube.requests if r.method in ("PATCH", "PUT", "POST")]


# ---------------------------------------------------------------- register / unregister


def test_register_adds_the_machine_with_a_merge_patch_pinned_to_the_resource_version(gordo_server, kube):
    before = kube.gordos[(NAMESPACE, "demo")]["metadata"]["resourceVersion"]
    provider(gordo_server, kube).register_model(machine())
    assert [m["name"] for m in kube.machines(NAMESPACE, "demo")] == ["model-a", "model-new"]
    (patch,) = writes(kube)
    assert patch.method == "PATCH" and patch.headers["Content-Type"] == "application/merge-patch+json"
    assert patch.path == "/apis/equinor.com/v1/namespaces/kubeflow/gordos/demo"
    assert patch.body["metadata"] == {"resourceVersion": before}
    assert patch.headers["Authorization"] == "Bearer kube-token"
    stored = kube.gordos[(NAMESPACE, "demo")]
    assert stored["spec"]["config"]["globals"] == {"runtime": {"server": {}}}  # the rest of the spec is untouched
    assert stored["spec"]["config"]["machines"][1] == machine()


def test_registering_an_existing_name_replaces_that_machine_in_place(gordo_server, kube):
    gordo = provider(gordo_server, kube)
    gordo.register_model(machine("model-b"))
    gordo.register_model(machine("model-a", metadata={"owner": "someone else"}))
    machines = kube.machines(NAMESPACE, "demo")
    assert [m["name"] for m in machines] == ["model-a", "model-b"]
    assert machines[0]["metadata"] == {"owner": "someone else"}


def test_a_conflicting_update_is_re_read_and_retried_keeping_the_other_change(gordo_server, kube):
    kube.interfere_next(2)
    provider(gordo_server, kube).register_model(machine())
    assert [r.status for r in writes(kube)] == [409, 409, 200]
    names = [m["name"] for m in kube.machines(NAMESPACE, "demo")]
    assert names == ["model-a", "concurrent-1", "concurrent-2", "model-new"]
    assert [r.method for r in kube.requests].count("GET") == 3


def test_endless_conflicts_give_up_as_transient(gordo_server, kube):
    kube.interfere_next(100)
    with pytest.raises(TransientError, match=f"kept changing under {CONFLICT_ATTEMPTS} updates"):
        provider(gordo_server, kube).register_model(machine())
    assert len(writes(kube)) == CONFLICT_ATTEMPTS


def test_unregister_removes_the_machine_and_an_unknown_name_is_unknown(gordo_server, kube):
    gordo = provider(gordo_server, kube)
    gordo.register_model(machine())
    gordo.unregister_model("model-a")
    assert [m["name"] for m in kube.machines(NAMESPACE, "demo")] == ["model-new"]
    with pytest.raises(UnknownModelError, match="no machine 'model-a'"):
        gordo.unregister_model("model-a")


def test_a_missing_gordo_resource_is_created_only_with_a_deploy_version(gordo_server, kube):
    with pytest.raises(PermanentError, match="no Gordo resource 'other'.*deploy_version"):
        GordoModels(GordoSettings(base_url=gordo_server.url, project="other", kubernetes_api_url=kube.url,
                                  kubernetes_token="kube-token", kubernetes_namespace=NAMESPACE),
                    kubernetes_environ={}).register_model(machine())
    creator = GordoModels(GordoSettings(base_url=gordo_server.url, project="other", kubernetes_api_url=kube.url,
                                        kubernetes_token="kube-token", kubernetes_namespace=NAMESPACE,
                                        deploy_version="6.0.4"), kubernetes_environ={})
    creator.register_model(machine())
    created = kube.gordos[(NAMESPACE, "other")]
    assert (created["kind"], created["apiVersion"], created["spec"]["deploy-version"]) == ("Gordo", "equinor.com/v1",
                                                                                          "6.0.4")
    assert [m["name"] for m in created["spec"]["config"]["machines"]] == ["model-new"]
    creator.register_model(machine("second"))  # now it exists: updated, not created again
    assert [m["name"] for m in kube.machines(NAMESPACE, "other")] == ["model-new", "second"]


def test_a_config_kept_as_yaml_text_stays_text(gordo_server, kube):
    resource = kube.gordos[(NAMESPACE, "demo")]
    resource["spec"]["config"] = yaml.safe_dump({"machines": [machine("model-a")], "globals": {"x": 1}})
    provider(gordo_server, kube).register_model(machine())
    config = kube.gordos[(NAMESPACE, "demo")]["spec"]["config"]
    assert isinstance(config, str)
    parsed = yaml.safe_load(config)
    assert [m["name"] for m in parsed["machines"]] == ["model-a", "model-new"] and parsed["globals"] == {"x": 1}


def test_a_wrong_kubernetes_token_is_permanent(gordo_server, kube):
    with pytest.raises(PermanentError, match="answered 401"):
        provider(gordo_server, kube, kubernetes_token="wrong").register_model(machine())


def test_without_kubernetes_registration_is_refused(gordo_server):
    gordo = GordoModels(GordoSettings(base_url=gordo_server.url, project="demo"), kubernetes_environ={},
                        service_account_dir=FIXTURES / "no-such-dir")
    assert gordo.kubernetes is None
    with pytest.raises(PermanentError, match="without Kubernetes"):
        gordo.register_model(machine())


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(("change", "message"), [
    ({"name": "Model_A"}, "machine name 'Model_A' is invalid"),
    ({"name": "a" * 64}, "at most 63 characters"),
    ({"name": "-edge"}, "is invalid"),
    ({"name": ""}, "machine name is required"),
    ({"dataset": None}, "machine model-new: dataset is required"),
    ({"model": None}, "machine model-new: model is required"),
    ({"model": {}}, "machine model-new: model is empty"),
    ({"modle": {}}, "unknown field\\(s\\) modle"),
    ({"dataset": "tags: [A]\ntrain_start_date: 2026-01-01T00:00:00\ntrain_end_date: 2026-01-02T00:00:00+00:00"},
     "dataset.train_start_date 2026-01-01T00:00:00 has no timezone"),
    ({"dataset": {"tags": ["A"], "train_start_date": "2026-01-02T00:00:00Z",
                  "train_end_date": "2026-01-01T00:00:00Z"}}, "train_end_date must be after"),
    ({"dataset": {"tags": [], "train_start_date": "2026-01-01T00:00:00Z", "train_end_date": "2026-01-02T00:00:00Z"}},
     "dataset.tags is required"),
    ({"dataset": {"tags": ["A"], "train_start_date": "2026-01-01", "train_end_date": "2026-01-02T00:00:00Z"}},
     "dataset.train_start_date 2026-01-01 has no timezone"),
    ({"dataset": "tags: [A]\ntrain_start_date: 2026-01-01\ntrain_end_date: 2026-01-02T00:00:00Z"},
     "dataset.train_start_date 2026-01-01 has no time and timezone"),
    ({"dataset": {"tags": ["A"], "train_start_date": "2026-01-01T00:00:00Z", "train_end_date": "2026-01-02T00:00:00Z",
                  "resolution": "1M"}}, "dataset.resolution"),
    ({"dataset": "tags: [A"}, "dataset is not valid YAML"),
    ({"metadata": ["x"]}, "metadata must be a mapping"),
])
def test_invalid_machines_are_refused_naming_the_field_before_anything_is_sent(gordo_server, kube, change, message):
    with pytest.raises(PermanentError, match=message):
        provider(gordo_server, kube).register_model(machine(**change))
    assert writes(kube) == [] and kube.requests == []


def test_the_captured_machine_with_yaml_text_sections_is_valid_and_sent_as_text(gordo_server, kube):
    captured = yaml.safe_load((FIXTURES / "model-config.yaml").read_text())["machines"][0]
    captured = copy.deepcopy(captured) | {"name": "model-c"}
    assert validate_machine(captured)["dataset"] == captured["dataset"]
    provider(gordo_server, kube).register_model(captured)
    stored = kube.machines(NAMESPACE, "demo")[-1]
    assert stored["name"] == "model-c" and isinstance(stored["dataset"], str) and "TAG-1" in stored["dataset"]


def test_datetimes_in_a_mapping_are_sent_as_iso_text(gordo_server, kube):
    loaded = yaml.safe_load("tags: [A]\ntrain_start_date: 2026-01-01T00:00:00+00:00\n"
                            "train_end_date: 2026-01-02T00:00:00+01:00\n")
    provider(gordo_server, kube).register_model(machine(dataset=loaded))
    stored = kube.machines(NAMESPACE, "demo")[-1]["dataset"]
    assert (stored["train_start_date"], stored["train_end_date"]) == ("2026-01-01T00:00:00+00:00",
                                                                      "2026-01-02T00:00:00+01:00")


# ---------------------------------------------------------------- status


def test_a_served_model_is_ready_with_revision_build_date_and_tags(gordo_server, kube):
    kube.add_model(NAMESPACE, "demo", "model-a", "Succeeded", "2026-11-25T00:30:00Z")
    status = provider(gordo_server, kube).get_model_status("model-a")
    assert (status.state, status.reason) == ("ready", "")
    assert status.details["revision"] == "1"
    assert status.details["build_date"] == "2026-11-25 00:32:36.839027+00:00"
    assert status.details["tags"] == ["TAG-1", "TAG-2", "TAG-3", "TAG-4"]
    assert status.details["phase"] == "Succeeded"
    (listing,) = [r for r in kube.requests if r.path.endswith("/models")]
    assert listing.query["labelSelector"] == ("applications.gordo.equinor.com/project-name=demo,"
                                              "applications.gordo.equinor.com/model-name=model-a")


@pytest.mark.parametrize(("phase", "state"), [("InProgress", "training"), ("Failed", "failed"),
                                              ("Unknown", "registered"), ("Succeeded", "training")])
def test_a_model_not_served_takes_its_state_from_the_newest_model_resource(gordo_server, kube, phase, state):
    kube.add_model(NAMESPACE, "demo", "model-b", "Failed" if phase != "Failed" else "Succeeded",
                   "2026-01-01T00:00:00Z")
    kube.add_model(NAMESPACE, "demo", "model-b", phase, "2026-02-01T00:00:00Z")
    kube.add_model(NAMESPACE, "other-project", "model-b", "Succeeded", "2026-03-01T00:00:00Z")
    status = provider(gordo_server, kube).get_model_status("model-b")
    assert (status.state, status.details["phase"]) == (state, phase)
    assert phase in status.reason


def test_a_machine_without_a_model_resource_is_registered_and_anything_else_unknown(gordo_server, kube):
    gordo = provider(gordo_server, kube)
    gordo.register_model(machine())
    assert gordo.get_model_status("model-new").state == "registered"
    unknown = gordo.get_model_status("never-heard-of")
    assert (unknown.state, unknown.reason) == ("unknown", "not served by gordo project demo")


def test_status_without_kubernetes_comes_from_the_server_alone(gordo_server):
    gordo_server.add_model(ModelSpec("model-b", has_metadata=False))
    gordo = GordoModels(GordoSettings(base_url=gordo_server.url, project="demo"), kubernetes_environ={},
                        service_account_dir=FIXTURES / "no-such-dir")
    assert gordo.get_model_status("model-a").state == "ready"
    assert gordo.get_model_status("model-b").state == "unknown"


# ---------------------------------------------------------------- where Kubernetes is


def test_in_cluster_defaults_come_from_the_service_account(tmp_path):
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("sa-token\n")
    (account / "namespace").write_text("gordo-ns\n")
    (account / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    settings = GordoSettings(base_url="http://gordo", project="demo")
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "6443"}
    target = resolve_kubernetes(settings, env, account)
    assert target is not None
    assert (target.api_url, target.namespace, target.token, target.token_file, target.ca_file) == (
        "https://10.0.0.1:6443", "gordo-ns", "", str(account / "token"), str(account / "ca.crt"))
    assert resolve_kubernetes(settings, {}, account) is None  # not in a cluster
    explicit = GordoSettings(base_url="http://gordo", project="demo", kubernetes_api_url="https://api:443/",
                             kubernetes_token="t", kubernetes_namespace="ns")
    target = resolve_kubernetes(explicit, {}, tmp_path / "absent")
    assert (target.api_url, target.namespace, target.token, target.ca_file) == ("https://api:443", "ns", "t", "")


def test_the_service_account_token_file_is_read_for_each_request(gordo_server, kube, tmp_path):
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("kube-token")
    gordo = GordoModels(GordoSettings(base_url=gordo_server.url, project="demo", kubernetes_api_url=kube.url,
                                      kubernetes_namespace=NAMESPACE, max_retries=0),
                        kubernetes_environ={}, service_account_dir=account)
    gordo.register_model(machine())
    (account / "token").write_text("rotated")
    kube.token = "rotated"
    gordo.unregister_model("model-new")
    assert kube.requests[-1].headers["Authorization"] == "Bearer rotated"


def test_the_test_api_refuses_a_stale_put_like_kubernetes(kube):
    import requests

    url = f"{kube.url}/apis/equinor.com/v1/namespaces/{NAMESPACE}/gordos/demo"
    headers = {"Authorization": "Bearer kube-token"}
    current = requests.get(url, headers=headers).json()
    stale = copy.deepcopy(current)
    assert requests.put(url, json=current, headers=headers).status_code == 200
    refused = requests.put(url, json=stale, headers=headers)
    assert (refused.status_code, refused.json()["reason"]) == (409, "Conflict")
