"""Produces to partition 0 of TOPIC with acks=all, one record in flight at a time, printing
`acked VALUE OFFSET` for each delivery the broker confirmed, until killed or COUNT is reached.

usage: produce_loop.py BOOTSTRAP TOPIC PREFIX COUNT
"""

import sys

from confluent_kafka import Producer


def main():
    bootstrap, topic, prefix, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0,
                         "message.timeout.ms": 3000, "enable.idempotence": True})

    def delivered(err, msg):
        if err is None:
            print(f"acked {msg.value().decode()} {msg.offset()}", flush=True)

    for i in range(count):
        producer.produce(topic, value=f"{prefix}-{i}".encode(), partition=0, on_delivery=delivered)
        producer.flush(5)


if __name__ == "__main__":
    main()
