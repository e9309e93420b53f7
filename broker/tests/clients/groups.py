"""A confluent-kafka consumer group against Weir: two members split a 4-partition topic, one
leaves and the other takes over, no record is missed; committed offsets survive the group and
a new member resumes right after them.

usage: groups.py BOOTSTRAP TOPIC ASSIGNOR
Exits non-zero with a message when something is off.
"""

import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

PARTITIONS = 4
RECORDS = 400


def fail(message):
    sys.exit(message)


def produce(bootstrap, topic, first, count):
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in range(first, first + count):
        producer.produce(topic, key=f"k{i}".encode(), value=f"v{i}".encode(), partition=i % PARTITIONS)
    if producer.flush(30) != 0:
        fail("produce did not finish")


def consumer(bootstrap, group, assignor):
    return Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 300,
        "partition.assignment.strategy": assignor,
    })


def poll_into(c, seen, timeout=0.2):
    msg = c.poll(timeout)
    if msg is None:
        return
    if msg.error():
        fail(f"consume error: {msg.error()}")
    seen[(msg.partition(), msg.offset())] = msg.value()


def until(what, condition, step, limit=60):
    deadline = time.time() + limit
    while not condition():
        if time.time() > deadline:
            fail(f"timed out waiting for {what}")
        step()


def main():
    bootstrap, topic, assignor = sys.argv[1:4]
    group = f"group-{topic}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS)])[topic].result(30)
    produce(bootstrap, topic, 0, RECORDS)

    seen = {}
    a = consumer(bootstrap, group, assignor)
    a.subscribe([topic])
    until("the first member to own all partitions",
          lambda: len(a.assignment()) == PARTITIONS and len(seen) >= 50,
          lambda: poll_into(a, seen))
    a.commit(asynchronous=False)

    b = consumer(bootstrap, group, assignor)
    b.subscribe([topic])

    def split():
        pa = {tp.partition for tp in a.assignment()}
        pb = {tp.partition for tp in b.assignment()}
        return len(pa) == 2 and len(pb) == 2 and not (pa & pb)

    until("two members to split the partitions", split,
          lambda: (poll_into(a, seen, 0.05), poll_into(b, seen, 0.05)))
    until("both members to read everything", lambda: len(seen) >= RECORDS // 2,
          lambda: (poll_into(a, seen, 0.05), poll_into(b, seen, 0.05)))
    b.commit(asynchronous=False)
    b.close()

    until("the remaining member to take over", lambda: len(a.assignment()) == PARTITIONS,
          lambda: poll_into(a, seen))
    until("every record to be consumed", lambda: len(seen) >= RECORDS, lambda: poll_into(a, seen))
    for (partition, offset), value in seen.items():
        i = offset * PARTITIONS + partition
        if value != f"v{i}".encode():
            fail(f"partition {partition} offset {offset}: {value!r}, expected v{i}")
    if len(seen) != RECORDS:
        fail(f"consumed {len(seen)} distinct records, produced {RECORDS}")
    # Commit what was read, explicitly: a partition this member never fetched from has no
    # position of its own to commit.
    ends = {p: 1 + max(o for (q, o) in seen if q == p) for p in range(PARTITIONS)}
    for tp in a.commit(offsets=[TopicPartition(topic, p, o) for p, o in ends.items()],
                       asynchronous=False):
        if tp.error:
            fail(f"commit of partition {tp.partition} failed: {tp.error}")
    committed = {tp.partition: tp.offset
                 for tp in a.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], 10)}
    a.close()
    if committed != {p: RECORDS // PARTITIONS for p in range(PARTITIONS)}:
        fail(f"committed offsets {committed}, expected {RECORDS // PARTITIONS} each")

    # A new member resumes after the committed offsets: it sees only the new records.
    produce(bootstrap, topic, RECORDS, 40)
    fresh = {}
    c = consumer(bootstrap, group, assignor)
    c.subscribe([topic])
    until("the new member to read the new records", lambda: len(fresh) >= 40,
          lambda: poll_into(c, fresh))
    old = [k for k in fresh if k[1] < RECORDS // PARTITIONS]
    if old:
        fail(f"records before the committed offsets were read again: {sorted(old)[:5]}")
    c.close()
    print(f"{assignor}: groups ok, {len(seen)} + {len(fresh)} records")


if __name__ == "__main__":
    main()
