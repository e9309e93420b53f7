"""Produce and consume throughput through librdkafka (confluent-kafka), with batching.

usage: librdkafka_perf.py BOOTSTRAP TOPIC RECORDS ACKS
Prints one line: produce_mb_s consume_mb_s (or an error line).
"""

import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

RECORD = bytes(range(256)) * 4  # 1 KiB


def main():
    bootstrap, topic, records, acks = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    producer = Producer({"bootstrap.servers": bootstrap, "acks": acks, "linger.ms": 5,
                         "batch.size": 1_000_000, "queue.buffering.max.kbytes": 1_048_576,
                         "compression.type": "none"})
    try:
        producer.list_topics(timeout=10)
    except KafkaException as e:
        sys.exit(f"librdkafka gets no metadata from {bootstrap}: {e}")
    start = time.time()
    for _ in range(records):
        while True:
            try:
                producer.produce(topic, RECORD, partition=0)
                break
            except BufferError:
                producer.poll(0.01)
    if producer.flush(120) != 0:
        sys.exit("produce did not finish")
    produce_s = time.time() - start

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"perf-{topic}",
                         "enable.auto.commit": False, "fetch.max.bytes": 52_428_800,
                         "max.partition.fetch.bytes": 8_388_608})
    consumer.assign([TopicPartition(topic, 0, 0)])
    got = 0
    start = time.time()
    deadline = start + 120
    while got < records and time.time() < deadline:
        for msg in consumer.consume(10_000, 1.0):
            if not msg.error():
                got += 1
    consume_s = time.time() - start
    consumer.close()
    if got < records:
        sys.exit(f"consumed only {got} of {records}")
    mb = records * len(RECORD) / 1e6
    print(f"{mb / produce_s:.0f} {mb / consume_s:.0f}")


if __name__ == "__main__":
    main()
