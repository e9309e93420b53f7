"""confluent-kafka with SASL/SCRAM-SHA-512: produce and consume as a user; a wrong password
is refused with an authentication error.

    sasl.py BOOTSTRAP USER PASSWORD
"""

import sys

from confluent_kafka import Consumer, KafkaError, Producer

bootstrap, user, password = sys.argv[1:4]
auth = {
    "bootstrap.servers": bootstrap,
    "security.protocol": "SASL_PLAINTEXT",
    "sasl.mechanisms": "SCRAM-SHA-512",
    "sasl.username": user,
}

producer = Producer({**auth, "sasl.password": password})
for i in range(50):
    producer.produce("sasl-topic", key=f"k{i}", value=f"value {i}")
assert producer.flush(30) == 0, "records left unsent"

consumer = Consumer({**auth, "sasl.password": password, "group.id": "sasl-group",
                     "auto.offset.reset": "earliest"})
consumer.subscribe(["sasl-topic"])
values = []
while len(values) < 50:
    message = consumer.poll(10)
    assert message is not None, f"only {len(values)} records consumed"
    assert message.error() is None, message.error()
    values.append(message.value().decode())
consumer.close()
assert sorted(values) == sorted(f"value {i}" for i in range(50)), values

errors = []
refused = Producer({**auth, "sasl.password": "not " + password,
                    "error_cb": lambda e: errors.append(e)})
refused.produce("sasl-topic", value="never")
refused.flush(5)
assert any(e.code() == KafkaError._AUTHENTICATION for e in errors), errors
assert any("uthentication failed" in e.str() for e in errors), errors
print("sasl ok")
