"""The suite YAML files, shipped as package data (``harness.config.SUITES_DIR``)."""
