# latigo: the scheduler and executors under supervisord (deploy/entrypoint.sh), or one command
# given as arguments (`docker run IMAGE latigo status`, or one process per pod on Kubernetes).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN groupadd --system --gid 10001 latigo \
    && useradd --system --uid 10001 --gid latigo --home-dir /data --no-create-home --shell /usr/sbin/nologin latigo \
    && install -d -o latigo -g latigo /data

WORKDIR /app

# Dependencies in their own layer: only setup.py and the version are copied, so a change to the code
# or the README reuses this layer. The package itself cannot be built from these files (setup.py
# packages latigo/ and alembic/), so its install_requires are read by running setup.py against a
# stand-in `setuptools` module (no build; an empty README.md for the long description) and installed
# alone, with the `kafka` extra (confluent-kafka, for the kafka task queue). Every dependency ships
# wheels, so no compiler is installed, ever.
COPY setup.py ./
COPY latigo/VERSION latigo/VERSION
RUN touch README.md \
    && python -c "import runpy, sys, types; st = sys.modules['setuptools'] = types.ModuleType('setuptools'); st.find_packages = lambda **kw: []; st.setup = lambda **kw: print(*kw['install_requires'], *kw['extras_require']['kafka'], sep='\n'); runpy.run_path('setup.py')" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm README.md /tmp/requirements.txt

# The code. The alembic scripts are packaged as latigo.migrations, so `latigo db upgrade` works from
# the installed package; the sources are removed after installing.
COPY latigo/ latigo/
COPY alembic/ alembic/
COPY README.md pyproject.toml alembic.ini supervisord.conf ./
COPY deploy/entrypoint.sh deploy/entrypoint.sh
RUN pip install --no-deps . \
    && rm -rf latigo alembic build *.egg-info \
    && chmod 0755 deploy/entrypoint.sh \
    && latigo --version

# What the entrypoint and the health check assume when nothing else is said (see supervisord.conf).
ENV LATIGO_ROLE=all \
    LATIGO_EXECUTORS=2 \
    LATIGO_METRICS_BASE_PORT=9100 \
    LATIGO_RUN_DIR=/tmp/latigo

USER latigo
# The working directory is writable by latigo: an embedded SQLite database (sqlite:///latigo.db)
# and ./local_config.yaml are looked for here.
WORKDIR /data

# /healthz, /readyz, /metrics: scheduler on 9100, executor N on 9100 + N.
EXPOSE 9100 9101 9102
STOPSIGNAL SIGTERM
# slim has no curl: the check is latigo's own urllib probe of every supervised program's /healthz.
HEALTHCHECK --interval=30s --timeout=15s --start-period=60s --retries=3 \
    CMD ["python", "-m", "latigo.observability"]
ENTRYPOINT ["/app/deploy/entrypoint.sh"]
