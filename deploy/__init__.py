"""Deployment of the search service outside this machine: `deploy.kubernetes` writes the
Kubernetes manifests of the scaled Flow (flow.scaled.yml)."""
