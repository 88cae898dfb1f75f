"""Parses merpati's /metrics with the OpenMetrics parser of Prometheus' official Python
client, and prints every sample as JSON: [{"name", "labels", "value"}, ...].

Usage: parse_metrics.py < metrics.txt. Exits non-zero if the text does not parse.
"""
import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

samples = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        samples.append({"name": s.name, "labels": s.labels, "value": s.value})
print(json.dumps(samples))
