"""confluent-kafka with the given security settings (TLS, SASL or both): produce and consume 50
records, or, with `refused`, check that those settings are turned away and print the errors
the client saw.

    secured.py BOOTSTRAP TOPIC roundtrip|refused KEY=VALUE...
"""

import sys

from confluent_kafka import Consumer, Producer

bootstrap, topic, mode = sys.argv[1:4]
settings = dict(arg.split("=", 1) for arg in sys.argv[4:])
settings["bootstrap.servers"] = bootstrap

if mode == "refused":
    errors, outcomes = [], []
    producer = Producer({**settings, "error_cb": errors.append, "message.timeout.ms": 3000})
    producer.produce(topic, value="never", on_delivery=lambda err, _: outcomes.append(err))
    producer.flush(6)
    assert outcomes and outcomes[0] is not None, "the record was delivered"
    assert errors, "the client reported no error"
    print("refused:", " | ".join(e.str() for e in errors))
    sys.exit(0)

assert mode == "roundtrip", mode
producer = Producer(settings)
for i in range(50):
    producer.produce(topic, key=f"k{i}", value=f"value {i}")
assert producer.flush(30) == 0, "records left unsent"

consumer = Consumer({**settings, "group.id": f"{topic}-group", "auto.offset.reset": "earliest"})
consumer.subscribe([topic])
values = []
while len(values) < 50:
    message = consumer.poll(10)
    assert message is not None, f"only {len(values)} records consumed"
    assert message.error() is None, message.error()
    values.append(message.value().decode())
consumer.close()
assert sorted(values) == sorted(f"value {i}" for i in range(50)), values
print("roundtrip ok")
