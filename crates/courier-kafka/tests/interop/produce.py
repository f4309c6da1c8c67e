#!/usr/bin/env python3
"""Produces records with kafka-python (an independent Kafka client), as another system would:
reads one JSON object per line from stdin, {"key": TEXT, "headers": [[NAME, VALUE], ...],
"value": TEXT}, sends each to TOPIC and exits once every record is acknowledged.

Usage: produce.py BOOTSTRAP TOPIC < records.jsonl
Exits non-zero with a clear message when kafka-python is missing or a send fails.
"""
import json
import sys

try:
    from kafka import KafkaProducer
except ImportError:
    sys.exit("kafka-python is not installed: run `python3 -m pip install kafka-python` "
             "(scripts/services.sh ensure_python_clients does it)")


def main():
    bootstrap, topic = sys.argv[1], sys.argv[2]
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for line in sys.stdin:
        record = json.loads(line)
        producer.send(topic, key=record["key"].encode(), value=record["value"].encode(),
                      headers=[(k, v.encode()) for k, v in record.get("headers", [])]).get(timeout=60)
    producer.close()


if __name__ == "__main__":
    main()
