"""Reads messages Courier published, with the independent nats-py client, and prints one JSON
object per message: its headers, its body (base64) and the body parsed as JSON when it is JSON.

usage: read_stream.py NATS_URL SUBJECT COUNT
"""

import asyncio
import base64
import json
import sys
import uuid

import nats


async def main(url: str, subject: str, count: int) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    sub = await js.pull_subscribe(subject, durable=f"interop-{uuid.uuid4().hex}")
    received = []
    while len(received) < count:
        for msg in await sub.fetch(count - len(received), timeout=10):
            await msg.ack()
            received.append(msg)
    for msg in received:
        try:
            body_json = json.loads(msg.data)
        except ValueError:
            body_json = None
        print(json.dumps({
            "subject": msg.subject,
            "headers": dict(msg.headers or {}),
            "body_b64": base64.b64encode(msg.data).decode(),
            "body_json": body_json,
        }))
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
