"""Deploy artefacts: Dockerfile, Helm chart, compose (validated offline)."""
