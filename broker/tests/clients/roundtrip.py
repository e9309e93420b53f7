"""Produce records with keys, headers and compression through one Python Kafka client, consume
them back from the beginning with the same client, and check every byte.

usage: roundtrip.py BOOTSTRAP {confluent,kafka-python} TOPIC [NAME=VALUE...]
kafka-python takes the NAME=VALUE settings as keyword arguments of its producer and consumer
(security_protocol=SASL_SSL, ssl_cafile=…). Exits non-zero with a message on the first mismatch.
"""

import sys
import time

COUNT = 200


def expected():
    for i in range(COUNT):
        key = None if i % 10 == 0 else f"key-{i % 7}".encode()
        value = f"record {i} " .encode() + bytes(range(i % 256)) + "\u00e9\u2603".encode()
        headers = [("n", str(i).encode()), ("dup", b"a"), ("dup", b"b")] if i % 3 == 0 else []
        yield key, value, headers


def check(got):
    want = list(expected())
    if len(got) != len(want):
        sys.exit(f"consumed {len(got)} records, produced {len(want)}")
    for i, (g, w) in enumerate(zip(got, want)):
        if g != w:
            sys.exit(f"record {i} differs:\n got  {g!r}\n want {w!r}")


def confluent(bootstrap, topic):
    from confluent_kafka import Consumer, Producer, TopicPartition, OFFSET_BEGINNING
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=1)])[topic].result(30)
    # Idempotent producers, the first half lz4-compressed, the second half zstd.
    errors = []
    records = list(expected())
    halves = [(records[:COUNT // 2], "lz4"), (records[COUNT // 2:], "zstd")]
    for half, codec in halves:
        producer = Producer({"bootstrap.servers": bootstrap, "compression.type": codec,
                             "linger.ms": 5, "acks": "all", "enable.idempotence": True})
        for key, value, headers in half:
            producer.produce(topic, value=value, key=key, headers=headers,
                             on_delivery=lambda err, msg: err and errors.append(err))
        if producer.flush(30) != 0 or errors:
            sys.exit(f"{codec} produce failed: {errors}")
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "roundtrip",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    got = []
    deadline = time.time() + 30
    while len(got) < COUNT and time.time() < deadline:
        msg = consumer.poll(1.0)
        if msg is None or (msg.error() and msg.error().code() == -191):  # partition EOF
            continue
        if msg.error():
            sys.exit(f"consume failed: {msg.error()}")
        got.append((msg.key(), msg.value(), [(k, v) for k, v in (msg.headers() or [])]))
    consumer.close()
    check(got)


def kafka_python(bootstrap, topic, **settings):
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    # kafka-python 3 is idempotent by default (InitProducerId and sequence numbers).
    producer = KafkaProducer(bootstrap_servers=bootstrap, compression_type="gzip", acks="all",
                             **settings)
    futures = [producer.send(topic, value=value, key=key, headers=headers)
               for key, value, headers in expected()]
    producer.flush(30)
    for f in futures:
        f.get(timeout=30)
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             enable_auto_commit=False, consumer_timeout_ms=10000, **settings)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    got = []
    for msg in consumer:
        got.append((msg.key, msg.value, list(msg.headers)))
        if len(got) == COUNT:
            break
    consumer.close()
    check(got)


def main():
    bootstrap, client, topic = sys.argv[1:4]
    settings = dict(arg.split("=", 1) for arg in sys.argv[4:])
    if settings:
        assert client == "kafka-python", "settings are for kafka-python"
        kafka_python(bootstrap, topic, **settings)
    else:
        {"confluent": confluent, "kafka-python": kafka_python}[client](bootstrap, topic)
    print(f"{client}: {COUNT} records round-tripped")


if __name__ == "__main__":
    main()
