"""latigo: continuous predictions from Gordo models over live sensor data."""

from pathlib import Path

__version__ = (Path(__file__).parent / "VERSION").read_text().strip()
