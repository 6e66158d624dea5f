"""Parses Prometheus text (stdin) with the reference parser, prometheus_client's, and prints the
samples as JSON: {"samples": [[name, {labels}, value], ...]}. A syntax error fails loudly."""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families

samples = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for sample in family.samples:
        samples.append([sample.name, sample.labels, sample.value])
json.dump({"samples": samples}, sys.stdout)
