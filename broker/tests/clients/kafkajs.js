// kafkajs against Weir: gzip-compressed produce with keys and headers, then a consumer group
// reading with eachBatch; every record is checked.
//
// usage: node kafkajs.js BOOTSTRAP TOPIC [CA_FILE USER PASSWORD]   (kafkajs through NODE_PATH)
// With a CA file, over TLS trusting that CA, signed in with SCRAM-SHA-512 as USER.
const fs = require("fs");
const { Kafka, CompressionTypes, logLevel } = require("kafkajs");

const [bootstrap, topic, caFile, username, password] = process.argv.slice(2);
const secured = caFile
  ? {
      ssl: { ca: [fs.readFileSync(caFile, "utf8")] },
      sasl: { mechanism: "scram-sha-512", username, password },
    }
  : {};
const COUNT = 300;

function fail(message) {
  console.error(message);
  process.exit(1);
}

async function main() {
  const kafka = new Kafka({ clientId: "weir-test", brokers: [bootstrap], logLevel: logLevel.ERROR, ...secured });
  const admin = kafka.admin();
  await admin.connect();
  await admin.createTopics({ topics: [{ topic, numPartitions: 3 }] });
  await admin.disconnect();

  const producer = kafka.producer();
  await producer.connect();
  const messages = [];
  for (let i = 0; i < COUNT; i++) {
    messages.push({ key: `k${i % 11}`, value: `value ${i} \u00e9`, headers: { n: `${i}` } });
  }
  for (let i = 0; i < COUNT; i += 50) {
    await producer.send({ topic, compression: CompressionTypes.GZIP, messages: messages.slice(i, i + 50) });
  }
  await producer.disconnect();

  const consumer = kafka.consumer({ groupId: `js-${topic}`, sessionTimeout: 10000 });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  const seen = new Map();
  let batches = 0;
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out with ${seen.size} records`)), 60000);
    consumer.run({
      eachBatch: async ({ batch, resolveOffset, heartbeat }) => {
        batches += 1;
        for (const m of batch.messages) {
          const i = Number(m.headers.n.toString());
          seen.set(i, { key: m.key.toString(), value: m.value.toString() });
          resolveOffset(m.offset);
        }
        await heartbeat();
        if (seen.size >= COUNT) {
          clearTimeout(timer);
          resolve();
        }
      },
    }).catch(reject);
  });
  await consumer.disconnect();
  if (seen.size !== COUNT) fail(`consumed ${seen.size} distinct records, produced ${COUNT}`);
  for (let i = 0; i < COUNT; i++) {
    const got = seen.get(i);
    if (!got || got.key !== messages[i].key || got.value !== messages[i].value) {
      fail(`record ${i}: ${JSON.stringify(got)}`);
    }
  }
  console.log(`kafkajs ok: ${COUNT} records in ${batches} batches`);
}

main().catch((e) => fail(`kafkajs failed: ${e.stack || e}`));
