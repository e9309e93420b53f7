"""Traffic for the crash/consistency checker, run while the broker is killed and restarted.

usage:
  crash_traffic.py produce BOOTSTRAP TOPIC PRODUCER_ID KEYS
      An idempotent acks=all producer: for ever, record n of key k has value "p<id>:k:n",
      written to the partition the key hashes to. Prints `acked KEY SEQ PARTITION OFFSET` for
      every delivery the broker confirmed.
  crash_traffic.py consume BOOTSTRAP TOPIC GROUP
      A group member that reads and commits after every poll. Prints `committed PARTITION
      OFFSET` for every commit the broker confirmed.
  crash_traffic.py commits BOOTSTRAP TOPIC GROUP PARTITIONS
      Prints `committed PARTITION OFFSET` for the group's committed offsets now.

Runs until killed; errors the clients ride out (a broker that is down) are not printed on
stdout. The consumer writes its rebalances and failed commits on stderr, with the Unix time.
"""

import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition


def produce(bootstrap, topic, producer_id, keys):
    producer = Producer({
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "message.timeout.ms": 30000,
        "reconnect.backoff.ms": 50,
        "reconnect.backoff.max.ms": 200,
        "log_level": 0,
    })

    def delivered(err, msg):
        if err is None:
            key = msg.key().decode()
            seq = msg.value().decode().rsplit(":", 1)[1]
            print(f"acked {key} {seq} {msg.partition()} {msg.offset()}", flush=True)
        elif err.fatal():
            print(f"fatal {err}", flush=True)
            sys.exit(2)

    n = 0
    while True:
        for k in range(keys):
            key = f"p{producer_id}-k{k}"
            while True:
                try:
                    producer.produce(topic, key=key.encode(), value=f"{key}:{n}".encode(),
                                     on_delivery=delivered)
                    break
                except BufferError:
                    producer.poll(0.05)
        n += 1
        producer.poll(0.001)


def note(what):
    print(f"{time.time():.1f} {what}", file=sys.stderr, flush=True)


def consume(bootstrap, topic, group):
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500,
        "reconnect.backoff.ms": 50,
        "reconnect.backoff.max.ms": 200,
        "log_level": 0,
        "error_cb": lambda e: note(f"error {e}"),
    })
    consumer.subscribe([topic],
                       on_assign=lambda _, ps: note(f"assigned {[p.partition for p in ps]}"),
                       on_revoke=lambda _, ps: note(f"revoked {[p.partition for p in ps]}"),
                       on_lost=lambda _, ps: note(f"lost {[p.partition for p in ps]}"))
    while True:
        messages = consumer.consume(500, 0.2)
        if not any(m.error() is None for m in messages):
            continue
        try:
            for tp in consumer.commit(asynchronous=False) or []:
                if tp.error is None and tp.offset >= 0:
                    print(f"committed {tp.partition} {tp.offset}", flush=True)
                elif tp.error is not None:
                    note(f"commit of partition {tp.partition} failed: {tp.error}")
        except KafkaException as e:
            note(f"commit failed: {e}")


def commits(bootstrap, topic, group, partitions):
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    wanted = [TopicPartition(topic, p) for p in range(partitions)]
    for tp in consumer.committed(wanted, 30):
        if tp.offset >= 0:
            print(f"committed {tp.partition} {tp.offset}", flush=True)
    consumer.close()


def main():
    role = sys.argv[1]
    if role == "produce":
        produce(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    elif role == "consume":
        consume(sys.argv[2], sys.argv[3], sys.argv[4])
    elif role == "commits":
        commits(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        sys.exit(f"unknown role {role}")


if __name__ == "__main__":
    main()
