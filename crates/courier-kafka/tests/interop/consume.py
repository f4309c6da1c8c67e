#!/usr/bin/env python3
"""Reads a topic with kafka-python (an independent Kafka client) and prints each record as one
JSON line: {"partition", "offset", "key", "headers": [[name, value], ...], "value", "value_json"},
where "value_json" is the value as Python's plain `json` decodes it (null when it is not JSON).
Key, header values and value are shown as UTF-8 text, bytes that are not UTF-8 escaped (`\xff`).

Usage: consume.py BOOTSTRAP TOPIC COUNT
Exits non-zero with a clear message when kafka-python is missing or COUNT records do not arrive.
"""
import json
import sys
import time


def parse_json(text):
    try:
        return json.loads(text)
    except ValueError:
        return None


def text(data):
    return None if data is None else data.decode("utf-8", errors="backslashreplace")


try:
    from kafka import KafkaConsumer, TopicPartition
except ImportError:
    sys.exit("kafka-python is not installed: run `python3 -m pip install kafka-python` "
             "(scripts/services.sh ensure_python_clients does it)")


def main():
    bootstrap, topic, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             auto_offset_reset="earliest", consumer_timeout_ms=1000)
    partitions = consumer.partitions_for_topic(topic) or {0}
    assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(assigned)
    consumer.seek_to_beginning(*assigned)
    seen = 0
    deadline = time.monotonic() + 30
    while seen < count and time.monotonic() < deadline:
        for record in consumer:
            print(json.dumps({
                "partition": record.partition,
                "offset": record.offset,
                "key": text(record.key),
                "headers": [[k, text(v)] for k, v in record.headers],
                "value": text(record.value),
                "value_json": parse_json(record.value),
            }), flush=True)
            seen += 1
            if seen == count:
                break
    consumer.close()
    if seen < count:
        sys.exit(f"only {seen} of {count} records arrived from topic {topic}")


if __name__ == "__main__":
    main()
