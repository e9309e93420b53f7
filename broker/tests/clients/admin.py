"""kafka-python's admin client and lookups against Weir: create, describe, alter and delete
topics, add partitions, offsets by time, and consumer groups as the admin client sees them.

usage: admin.py BOOTSTRAP
Exits non-zero with a message when something is off.
"""

import sys
import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewPartitions, NewTopic


def fail(message):
    sys.exit(message)


def topic_configs(admin, topic):
    result = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    # kafka-python 3 answers {"topic": {name: {key: {"value": ..., "config_source": ...}}}}
    # and leaves out keys at their defaults.
    entries = result.get("topic", {}).get(topic)
    if entries is None:
        fail(f"describe_configs {topic}: {result}")
    return {key: entry["value"] for key, entry in entries.items()}


def main():
    bootstrap = sys.argv[1]
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)

    admin.create_topics([NewTopic("adm", num_partitions=2, replication_factor=1,
                                  topic_configs={"retention.ms": "60000"})])
    configs = topic_configs(admin, "adm")
    if configs.get("retention.ms") != "60000":
        fail(f"unexpected configs after create: {configs}")

    admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, "adm",
                                        configs={"retention.ms": "120000"})])
    if topic_configs(admin, "adm").get("retention.ms") != "120000":
        fail("alter_configs did not take")
    # kafka-python 3 reports per-resource errors in its result.
    result = admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, "adm",
                                                 configs={"cleanup.policy": "sometimes"})])
    if "cleanup.policy" not in str(result) or "Error 40" not in str(result):
        fail(f"a bad config value was not refused with INVALID_CONFIG: {result}")

    admin.create_partitions({"adm": NewPartitions(total_count=4)})
    topics = {t["name"]: t for t in admin.describe_topics(["adm"])}
    if len(topics["adm"]["partitions"]) != 4:
        fail(f"partitions after create_partitions: {topics['adm']['partitions']}")

    # Offsets by time, with timestamps set by the producer.
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    base = int(time.time() * 1000) - 100_000
    for i in range(10):
        producer.send("adm", value=f"t{i}".encode(), partition=0, timestamp_ms=base + i * 1000)
    producer.flush(30)
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    tp = TopicPartition("adm", 0)
    found = consumer.offsets_for_times({tp: base + 3500})[tp]
    if found is None or found.offset != 4 or found.timestamp != base + 4000:
        fail(f"offsets_for_times: {found}")
    if consumer.offsets_for_times({tp: base + 60_000})[tp] is not None:
        fail("a time after every record should find nothing")
    if consumer.beginning_offsets([tp])[tp] != 0 or consumer.end_offsets([tp])[tp] != 10:
        fail("beginning/end offsets are off")
    consumer.close()

    # A group that commits, as the admin client lists and describes it.
    member = KafkaConsumer("adm", bootstrap_servers=bootstrap, group_id="adm-group",
                           auto_offset_reset="earliest", enable_auto_commit=False,
                           consumer_timeout_ms=5000)
    count = sum(1 for _ in member)
    member.commit()
    groups = admin.list_groups()
    if not any(g["group_id"] == "adm-group" and g["group_state"] == "Stable" for g in groups):
        fail(f"list_groups: {groups}")
    offsets = admin.list_group_offsets("adm-group").get("adm-group", {})
    committed = offsets.get(TopicPartition("adm", 0))
    if committed is None or committed.offset != 10:
        fail(f"list_group_offsets: {offsets}")
    member.close()
    if count != 10:
        fail(f"the group member read {count} records, expected 10")

    cluster = admin.describe_cluster()
    if cluster.get("cluster_id") != "weir" or len(cluster.get("brokers", [])) != 1:
        fail(f"describe_cluster: {cluster}")

    admin.delete_topics(["adm"])
    if "adm" in admin.list_topics():
        fail("deleted topic is still listed")
    admin.close()
    print("admin ok")


if __name__ == "__main__":
    main()
