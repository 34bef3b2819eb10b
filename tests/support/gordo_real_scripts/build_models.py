"""Build Gordo models with Gordo's own builder; runs INSIDE the gordo venv (never imports latigo).

    python build_models.py CONFIG.yaml PROJECT OUTPUT_DIR

CONFIG.yaml is a Gordo project config (`machines:` list, optional `globals:`), the same file
`gordo.builder.local_build` and the workflow generator read. Every machine is normalised with the
config's globals (`NormalizedConfig`, as `local_build` and the Argo workflow do), its model definition
is fully expanded (as `gordo build` does), and `ModelBuilder.build(output_dir=...)` trains it and
writes it with `gordo.serializer.dump` (model.pkl, metadata.json, info.json with the checksum) into
OUTPUT_DIR/<machine name>/: the layout `gordo run-server` serves with MODEL_COLLECTION_DIR=OUTPUT_DIR.

Prints one JSON line per model (`{"name", "seconds", "model_offset"}`) on stdout; on the first failure
prints the traceback on stderr and exits 1.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
import traceback


def main(config_path: str, project: str, output_dir: str) -> int:
    from gordo import serializer
    from gordo.builder import ModelBuilder
    from gordo.workflow.config_elements.normalized_config import NormalizedConfig
    from gordo.workflow.workflow_generator.workflow_generator import get_dict_from_yaml

    with open(config_path) as file:
        config = get_dict_from_yaml(io.StringIO(file.read()))
    machines = NormalizedConfig(config, project_name=project).machines
    os.makedirs(output_dir, exist_ok=True)
    for machine in machines:
        started = time.monotonic()
        try:
            machine.model = serializer.into_definition(serializer.from_definition(machine.model))
            _, built = ModelBuilder(machine=machine).build(output_dir=os.path.join(output_dir, machine.name))
        except Exception:
            print(f"gordo could not build model {machine.name!r}:", file=sys.stderr)
            traceback.print_exc()
            return 1
        offset = built.metadata.build_metadata.model.model_offset
        print(json.dumps({"name": machine.name, "seconds": round(time.monotonic() - started, 2),
                          "model_offset": offset}), flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    sys.exit(main(*sys.argv[1:]))
