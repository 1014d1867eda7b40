"""Deployment tooling, not part of the Flower app: certificates, warm SuperExec, launchers."""
