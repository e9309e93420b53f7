"""ACLs with confluent-kafka: each operation of the matrix done once where an ACL allows it and
once where none does, as the user alice, and ACLs managed through Kafka's admin API by a super
user. The test that runs this made the users and alice's first rules with `weir acl add`:

    READ, WRITE on topic orders          READ, DELETE, ALTER, CREATE on topics prefixed alice-
    READ on topics prefixed logs-        DENY READ on topic logs-secret
    READ on group alice-group            ALTER_CONFIGS on topic orders

    acls.py BOOTSTRAP PASSWORD     (users admin, a super user, and alice share the password)
"""

import sys
import uuid

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import (AclBinding, AclBindingFilter, AclOperation,
                                   AclPermissionType, AdminClient, ConfigResource, NewPartitions,
                                   NewTopic, ResourcePatternType, ResourceType)

bootstrap, password = sys.argv[1:3]


def config(user):
    return {"bootstrap.servers": bootstrap, "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanisms": "SCRAM-SHA-256", "sasl.username": user, "sasl.password": password}


alice = AdminClient(config("alice"))
admin = AdminClient(config("admin"))


def check(name, ok):
    assert ok, name
    print("ok", name)


def error_of(future):
    """The Kafka error code a future failed with, or None."""
    try:
        future.result(timeout=15)
        return None
    except KafkaException as e:
        return e.args[0].code()


def produce(topic):
    """The delivery error code of one record (None: delivered)."""
    outcome = []
    producer = Producer({**config("alice"), "message.timeout.ms": 5000})
    producer.produce(topic, value=b"from alice",
                     on_delivery=lambda err, _: outcome.append(err.code() if err else None))
    producer.flush(8)
    assert outcome, f"no delivery report for {topic}"
    return outcome[0]


def consume(topic, group):
    """(records read, error code or None) of a consumer reading `topic` from the start."""
    consumer = Consumer({**config("alice"), "group.id": group, "auto.offset.reset": "earliest",
                         "enable.auto.commit": False})
    consumer.subscribe([topic])
    records, error = 0, None
    for _ in range(20):
        message = consumer.poll(1)
        if message is None:
            if records:
                break
            continue
        if message.error():
            if message.error().code() != KafkaError._PARTITION_EOF:
                error = message.error().code()
                break
            continue
        records += 1
    consumer.close()
    return records, error


# WRITE: orders is allowed; another topic is not.
check("write allowed", produce("orders") is None)
check("write denied", produce("secret") == KafkaError.TOPIC_AUTHORIZATION_FAILED)

# READ of the topic and the group.
records, error = consume("orders", "alice-group")
check("read allowed", records >= 1 and error is None)
records, error = consume("secret", "alice-group")
check("read of a topic denied", records == 0 and error == KafkaError.TOPIC_AUTHORIZATION_FAILED)
records, error = consume("orders", "other-group")
check("read of a group denied", records == 0 and error == KafkaError.GROUP_AUTHORIZATION_FAILED)
# A prefixed allow, and a deny that wins over it.
records, error = consume("logs-web", "alice-group")
check("prefixed read allowed", records >= 1 and error is None)
records, error = consume("logs-secret", "alice-group")
check("deny wins over allow", records == 0 and error == KafkaError.TOPIC_AUTHORIZATION_FAILED)

# DESCRIBE: metadata lists only the topics alice may describe.
topics = set(alice.list_topics(timeout=10).topics)
check("describe filters metadata", {"orders", "logs-web"} <= topics and "secret" not in topics)

# CREATE, ALTER, DELETE under the alice- prefix, and nowhere else.
name = f"alice-{uuid.uuid4().hex[:8]}"
check("create allowed", error_of(alice.create_topics([NewTopic(name, 1)])[name]) is None)
check("create denied", error_of(alice.create_topics([NewTopic("other-new", 1)])["other-new"])
      == KafkaError.TOPIC_AUTHORIZATION_FAILED)
check("alter allowed", error_of(alice.create_partitions([NewPartitions(name, 2)])[name]) is None)
check("alter denied", error_of(alice.create_partitions([NewPartitions("orders", 3)])["orders"])
      == KafkaError.TOPIC_AUTHORIZATION_FAILED)
check("delete allowed", error_of(alice.delete_topics([name])[name]) is None)
check("delete denied", error_of(alice.delete_topics(["orders"])["orders"])
      == KafkaError.TOPIC_AUTHORIZATION_FAILED)

# DESCRIBE_CONFIGS (implied by ALTER_CONFIGS on orders), and ALTER_CONFIGS elsewhere.
orders = ConfigResource(ResourceType.TOPIC, "orders")
check("describe configs allowed", error_of(alice.describe_configs([orders])[orders]) is None)
secret = ConfigResource(ResourceType.TOPIC, "secret")
check("describe configs denied", error_of(alice.describe_configs([secret])[secret])
      == KafkaError.TOPIC_AUTHORIZATION_FAILED)

# ACLs themselves: alice may not manage them, the super user may.
grant = AclBinding(ResourceType.TOPIC, "secret", ResourcePatternType.LITERAL, "User:alice", "*",
                   AclOperation.WRITE, AclPermissionType.ALLOW)
check("create acls denied", error_of(alice.create_acls([grant])[grant])
      == KafkaError.CLUSTER_AUTHORIZATION_FAILED)
check("create acls allowed", error_of(admin.create_acls([grant])[grant]) is None)
check("a new acl takes effect", produce("secret") is None)
everything = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, "User:alice", None,
                              AclOperation.ANY, AclPermissionType.ANY)
described = admin.describe_acls(everything).result(timeout=15)
check("describe acls", grant in described and len(described) >= 10)
only_grant = AclBindingFilter(ResourceType.TOPIC, "secret", ResourcePatternType.LITERAL,
                              "User:alice", None, AclOperation.WRITE, AclPermissionType.ALLOW)
deleted = admin.delete_acls([only_grant])[only_grant].result(timeout=15)
check("delete acls", deleted == [grant])
check("a deleted acl no longer allows", produce("secret") == KafkaError.TOPIC_AUTHORIZATION_FAILED)
print("acls ok")
