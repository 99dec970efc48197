"""A Kubernetes API server for tests: kmock's emulator made to behave where kopf and kubectl look."""
