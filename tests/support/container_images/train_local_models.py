"""Train local models into the configured database, from inside the latigo image.

    podman exec -i CONTAINER python - COUNT RESOLUTION < train_local_models.py

The embedded model provider (`local`) only lists models that were trained and stored in latigo's
database (`latigo demo` does it for its own SQLite file); a fresh deployment on the embedded
providers has none, so the container tests train a few, over one day of synthetic history, with the
image's own scikit-learn and the container's configuration (its LATIGO_* variables). A resolution as
fine as the scheduler's interval (1m for a 1m interval) gives every window rows to predict.
Prints the names of the models it trained, one a line.
"""

import sys
from datetime import datetime, timedelta, timezone

from latigo.config import load_config
from latigo.factory import Components
from latigo.models.local import machines_for_groups
from latigo.types import TimeRange

count = int(sys.argv[1]) if len(sys.argv) > 1 else 2
resolution = sys.argv[2] if len(sys.argv) > 2 else "10m"
components = Components(load_config())
end = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
training = TimeRange(end - timedelta(days=1), end)
for machine in machines_for_groups(components.sensor_data.get_sensor_list(), count, training, resolution):
    components.model_execution.register_model(machine)
    print(machine["name"], flush=True)
components.engine.dispose()
