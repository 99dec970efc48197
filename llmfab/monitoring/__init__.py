"""llmfab.monitoring: the Grafana dashboards and Prometheus alert rules shipped with the chart."""
