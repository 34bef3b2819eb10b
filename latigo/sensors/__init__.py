"""Sensor sources: which tags exist and their values on a model's time grid (InfluxDB, the Data API, ...)."""
