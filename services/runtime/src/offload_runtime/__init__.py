"""The shared runtime: broker wiring, job store, job runner, settings, logging, errors."""
