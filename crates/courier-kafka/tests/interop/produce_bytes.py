#!/usr/bin/env python3
"""Produces records given as bytes with kafka-python (an independent Kafka client), including
bytes that are not UTF-8 where another system might write them: reads one JSON object per line
from stdin, {"key": HEX, "headers": [[NAME_HEX, VALUE_HEX], ...], "value": HEX}, sends each to
TOPIC in order and prints {"partition": P, "offset": O} per record once it is acknowledged.

Usage: produce_bytes.py BOOTSTRAP TOPIC < records.jsonl
Exits non-zero with a clear message when kafka-python is missing or a send fails.
"""
import json
import sys

try:
    from kafka import KafkaProducer
except ImportError:
    sys.exit("kafka-python is not installed: run `python3 -m pip install kafka-python` "
             "(scripts/services.sh ensure_python_clients does it)")


class RawName(str):
    """A header name kafka-python writes as the given bytes: it only takes `str` names and
    encodes them as UTF-8, so this `str` encodes to bytes that need not be UTF-8, as a client
    in another language may write them."""

    def __new__(cls, raw):
        name = super().__new__(cls, raw.decode("latin-1"))
        name.raw = raw
        return name

    def encode(self, *args, **kwargs):
        return self.raw


def main():
    bootstrap, topic = sys.argv[1], sys.argv[2]
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for line in sys.stdin:
        record = json.loads(line)
        headers = [(RawName(bytes.fromhex(k)), bytes.fromhex(v)) for k, v in record["headers"]]
        stored = producer.send(topic, key=bytes.fromhex(record["key"]), value=bytes.fromhex(record["value"]),
                               headers=headers).get(timeout=60)
        print(json.dumps({"partition": stored.partition, "offset": stored.offset}), flush=True)
    producer.close()


if __name__ == "__main__":
    main()
