"""A group member that outlives its coordinator.

usage: failover_member.py BOOTSTRAP TOPIC STOP_FILE
Joins group "steady-client" with one member, reads TOPIC and commits as it goes, printing
"assigned" once it holds its partitions, until STOP_FILE exists and it has read every record
produced by then; then prints how often its partitions were assigned and revoked, its member
id before and after, and the records it read.
"""

import os
import sys
import time

from confluent_kafka import Consumer, KafkaException

assigned, revoked = [], []


def main():
    bootstrap, topic, stop_file = sys.argv[1:4]
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "steady-client",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "session.timeout.ms": 45000, "heartbeat.interval.ms": 500,
                  # A metadata answer lost as the bootstrap connection is replaced would
                  # otherwise hold the first join for the default five minutes.
                  "topic.metadata.refresh.interval.ms": 2000})
    c.subscribe([topic],
                on_assign=lambda _c, parts: assigned.append(len(parts)),
                on_revoke=lambda _c, parts: revoked.append(len(parts)))
    member_before = None
    values = []
    deadline = time.time() + 120
    while time.time() < deadline:
        msg = c.poll(0.2)
        if assigned and member_before is None:
            member_before = c.memberid()
            print("assigned", flush=True)
        if msg is not None and not msg.error():
            values.append(msg.value().decode())
            try:
                c.commit(message=msg, asynchronous=False)
            except KafkaException:
                pass  # the coordinator is away; a later commit covers this one
        expected = open(stop_file).read().strip() if os.path.exists(stop_file) else ""
        if expected and len(values) >= int(expected):
            break
    member_after = c.memberid()
    # Counted before close, which revokes the partitions as it leaves.
    counts = f"assigned {len(assigned)} revoked {len(revoked)} "
    c.close()
    print(counts +
          f"same member {member_before == member_after} read {len(values)} "
          f"distinct {len(set(values))}", flush=True)


if __name__ == "__main__":
    main()
