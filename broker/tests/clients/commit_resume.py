"""Committed offsets across a broker restart.

usage: commit_resume.py BOOTSTRAP TOPIC before|after
before: produces 100 records, a group member reads and commits the first 50.
after:  a new member of the same group must start at offset 50 and read the other 50.
"""

import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition


def member(bootstrap):
    return Consumer({"bootstrap.servers": bootstrap, "group.id": "resume",
                     "auto.offset.reset": "earliest", "enable.auto.commit": False})


def read(c, count):
    got = []
    deadline = time.time() + 30
    while len(got) < count and time.time() < deadline:
        msg = c.poll(0.5)
        if msg is not None and not msg.error():
            got.append((msg.offset(), msg.value().decode()))
    return got


def main():
    bootstrap, topic, phase = sys.argv[1:4]
    if phase == "before":
        producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
        for i in range(100):
            producer.produce(topic, value=f"r{i}".encode(), partition=0)
        producer.flush(30)
        c = member(bootstrap)
        c.subscribe([topic])
        got = read(c, 50)[:50]
        if [o for o, _ in got] != list(range(50)):
            sys.exit(f"first read: {got[:5]}...")
        c.commit(offsets=[TopicPartition(topic, 0, 50)], asynchronous=False)
        c.close()
    else:
        c = member(bootstrap)
        c.subscribe([topic])
        got = read(c, 50)
        c.close()
        if got != [(o, f"r{o}") for o in range(50, 100)]:
            sys.exit(f"after restart read {got[:3]}... ({len(got)} records), expected offsets 50..99")
    print(f"{phase} ok")


if __name__ == "__main__":
    main()
