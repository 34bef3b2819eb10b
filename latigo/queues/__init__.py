"""Task queues: the database queue (embedded default) and Azure Event Hub (production)."""
