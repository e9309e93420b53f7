"""confluent-kafka's admin client manages SCRAM credentials: a super user creates a user with
AlterUserScramCredentials, the user logs in with it, Describe shows its mechanism and
iterations, a user who is not a super user is refused, and a deleted credential no longer logs
in.

    scram_admin.py BOOTSTRAP SUPER_USER SUPER_PASSWORD PLAIN_USER PLAIN_PASSWORD
"""

import sys

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import (AdminClient, ScramCredentialInfo, ScramMechanism,
                                   UserScramCredentialDeletion, UserScramCredentialUpsertion)

bootstrap, admin_user, admin_password, plain_user, plain_password = sys.argv[1:6]


def config(user, password, mechanism="SCRAM-SHA-256"):
    return {"bootstrap.servers": bootstrap, "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanisms": mechanism, "sasl.username": user, "sasl.password": password}


def produces(user, password):
    errors = []
    producer = Producer({**config(user, password), "error_cb": lambda e: errors.append(e),
                         "message.timeout.ms": 5000})
    delivered = []
    producer.produce("scram-admin", value=user, on_delivery=lambda e, m: delivered.append(e))
    producer.flush(6)
    return len(delivered) == 1 and delivered[0] is None, errors


admin = AdminClient(config(admin_user, admin_password))
upsert = UserScramCredentialUpsertion(
    "dave", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 8192), b"dave's secret")
for user, future in admin.alter_user_scram_credentials([upsert]).items():
    future.result(10)

ok, errors = produces("dave", "dave's secret")
assert ok, errors
ok, errors = produces("dave", "not dave's secret")
assert not ok and any(e.code() == KafkaError._AUTHENTICATION for e in errors), errors

described = admin.describe_user_scram_credentials(["dave"])["dave"].result(10)
infos = [(i.mechanism, i.iterations) for i in described.scram_credential_infos]
assert infos == [(ScramMechanism.SCRAM_SHA_256, 8192)], infos
everyone = admin.describe_user_scram_credentials().result(10)
assert {"dave", admin_user, plain_user} <= set(everyone), everyone

# A user who is not a super user may not read or change credentials.
plain = AdminClient(config(plain_user, plain_password))
try:
    plain.alter_user_scram_credentials([UserScramCredentialUpsertion(
        admin_user, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 4096),
        b"taken over")])[admin_user].result(10)
    raise AssertionError("a plain user changed the super user's password")
except KafkaException as e:
    assert e.args[0].code() == KafkaError.CLUSTER_AUTHORIZATION_FAILED, e
ok, errors = produces(admin_user, admin_password)
assert ok, errors

deletion = UserScramCredentialDeletion("dave", ScramMechanism.SCRAM_SHA_256)
admin.alter_user_scram_credentials([deletion])["dave"].result(10)
ok, errors = produces("dave", "dave's secret")
assert not ok, "a deleted credential still logs in"
print("scram admin ok")
