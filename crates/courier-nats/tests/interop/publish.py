"""Publishes messages with the independent nats-py client, as another system would: reads one
JSON object per line from stdin, {"body": TEXT, "headers": {NAME: VALUE, ...}}, and publishes
each body to JetStream, with no header block at all when "headers" is absent (as the reference
system's NATS publisher sends its envelopes). Exits once every publish is acknowledged.

usage: publish.py NATS_URL SUBJECT < messages.jsonl
"""

import asyncio
import json
import sys

import nats


async def main(url: str, subject: str) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    for line in sys.stdin:
        message = json.loads(line)
        await js.publish(subject, message["body"].encode(), headers=message.get("headers"))
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
