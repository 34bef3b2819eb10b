"""Sensor and model catalogs from YAML and CSV files (how a Tilstandomatic export is fed in)."""

from datetime import timedelta

import pytest

from latigo.errors import ConfigError, UnknownModelError
from latigo.models.catalog import ModelCatalog
from latigo.sensors.catalog import SensorCatalog
from latigo.types import DEFAULT_PROJECT, ModelRef


def Ref(name: str) -> ModelRef:  # noqa: N802 - reads as the type it builds
    return ModelRef(DEFAULT_PROJECT, name)


def test_sensor_catalog_from_yaml_and_csv(tmp_path):
    (tmp_path / "s.yaml").write_text("sensors:\n  - TAG-1\n  - {name: TAG-2, unit: bar}\n")
    (tmp_path / "s.csv").write_text("name,unit\nTAG-1,degC\nTAG 2,bar\n")
    assert SensorCatalog(str(tmp_path / "s.yaml")).get_sensor_list() == ["TAG-1", "TAG-2"]
    csv_catalog = SensorCatalog(str(tmp_path / "s.csv"))
    assert csv_catalog.sensor_exists("TAG 2") and not csv_catalog.sensor_exists("TAG-2")


def test_model_catalog_from_yaml_and_csv(tmp_path):
    (tmp_path / "m.yaml").write_text(
        "models:\n  - {name: pump-1, tags: [A, B], resolution: 10T, model_offset: 3}\n")
    (tmp_path / "m.csv").write_text("name,tags,target_tags,resolution\npump-2,A;B;C,C,1H\n")
    yaml_catalog = ModelCatalog(str(tmp_path / "m.yaml"))
    info = yaml_catalog.get_model_info(Ref("pump-1"))
    assert (info.tags, info.target_tags, info.resolution, info.model_offset) == (
        ("A", "B"), ("A", "B"), timedelta(minutes=10), 3)
    csv_info = ModelCatalog(str(tmp_path / "m.csv")).get_model_info(Ref("pump-2"))
    assert (csv_info.tags, csv_info.target_tags, csv_info.resolution) == (("A", "B", "C"), ("C",), timedelta(hours=1))
    assert yaml_catalog.model_exists(Ref("pump-1")) and not yaml_catalog.model_exists(Ref("pump-2"))
    with pytest.raises(UnknownModelError, match="pump-9"):
        yaml_catalog.get_model_info(Ref("pump-9"))
    assert yaml_catalog.get_model_list() == [Ref("pump-1")]


def test_model_catalog_names_projects(tmp_path):
    (tmp_path / "m.csv").write_text("name,tags,project\npump-1,A;B,plant-a\npump-2,C,plant-b\npump-3,D,\n")
    catalog = ModelCatalog(str(tmp_path / "m.csv"))
    assert catalog.get_model_list() == [ModelRef("plant-a", "pump-1"), ModelRef("plant-b", "pump-2"),
                                        Ref("pump-3")]
    assert catalog.get_model_info(ModelRef("plant-b", "pump-2")).tags == ("C",)
    assert not catalog.model_exists(ModelRef("plant-a", "pump-2"))


def test_a_model_name_may_repeat_across_projects_but_not_within_one(tmp_path):
    (tmp_path / "m.csv").write_text("name,tags,project\npump-1,A,plant-a\npump-1,B,plant-b\npump-1,C,\n")
    catalog = ModelCatalog(str(tmp_path / "m.csv"))
    assert catalog.get_model_list() == [ModelRef("plant-a", "pump-1"), ModelRef("plant-b", "pump-1"), Ref("pump-1")]
    assert catalog.get_model_info(ModelRef("plant-b", "pump-1")).tags == ("B",)
    (tmp_path / "twice.csv").write_text("name,tags,project\npump-1,A,plant-a\npump-1,B,plant-a\n")
    with pytest.raises(ConfigError, match="row 3: 'plant-a/pump-1' already listed at row 2"):
        ModelCatalog(str(tmp_path / "twice.csv"))


@pytest.mark.parametrize("name,text,message", [
    ("m.csv", "name,tags\npump-1,A;B\npump-2\n", "row 3: fewer fields"),
    ("m.csv", "name,tags\npump-1,A;B,extra\n", "row 2: more fields"),
    ("m.csv", "name,tags\npump-1,\n", "row 2: missing tags"),
    ("m.csv", "name,tags\npump-1,A\npump-1,B\n", "row 3: 'pump-1' already listed at row 2"),
    ("m.csv", "name,tags,model_offset\npump-1,A,-2\n", "row 2: model_offset -2 is negative"),
    ("m.yaml", "models:\n  - {name: pump-1}\n", "row 1: missing tags"),
    ("m.yaml", "models:\n  - {name: a, tags: [A]}\n  - 42\n", "row 2: expected a mapping"),
    ("m.yaml", "models: [\n", "broken YAML"),
    ("m.txt", "", "use a .yaml, .yml or .csv"),
])
def test_malformed_catalogs_are_rejected_with_the_row(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=message):
        ModelCatalog(str(tmp_path / name))
