//! The cluster's tables in Postgres, in schema `weir`, brought up to date by [`migrate`].
//!
//! Each entry of [`MIGRATIONS`] moves the schema one version on; a database already at a version
//! runs only the entries after it. A node refuses a database newer than it knows, so an old
//! node never writes into tables it does not understand.

use tokio_postgres::Client;

use crate::{ClusterError, Result};

/// Statements per version: `MIGRATIONS[n]` takes the schema from version `n` to `n + 1`.
pub const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE weir.topics (
  topic_id   bigserial PRIMARY KEY,
  name       text UNIQUE NOT NULL,
  partitions int  NOT NULL CHECK (partitions > 0),
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE weir.partitions (
  topic_id         bigint NOT NULL REFERENCES weir.topics,
  partition        int    NOT NULL,
  next_offset      bigint NOT NULL DEFAULT 0,
  log_start_offset bigint NOT NULL DEFAULT 0,
  max_timestamp    bigint NOT NULL DEFAULT -1,
  PRIMARY KEY (topic_id, partition)
);
CREATE TABLE weir.objects (
  object_id  bigserial PRIMARY KEY,
  key        text UNIQUE NOT NULL,
  bytes      bigint NOT NULL,
  live_bytes bigint NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE weir.batches (
  topic_id      bigint NOT NULL,
  partition     int    NOT NULL,
  base_offset   bigint NOT NULL,
  last_offset   bigint NOT NULL,
  max_timestamp bigint NOT NULL,
  object_id     bigint NOT NULL REFERENCES weir.objects,
  byte_start    bigint NOT NULL,
  byte_len      int    NOT NULL,
  PRIMARY KEY (topic_id, partition, base_offset),
  FOREIGN KEY (topic_id, partition) REFERENCES weir.partitions
);
CREATE INDEX batches_last_offset ON weir.batches (topic_id, partition, last_offset);
"#,
    r#"
CREATE SEQUENCE weir.producer_ids;
-- Idempotent producers: each one's epoch and last batches per partition, as a single node keeps
-- them in memory (weir_storage::producer), so a retry on any node finds its batch.
CREATE TABLE weir.producer_batches (
  topic_id       bigint   NOT NULL,
  partition      int      NOT NULL,
  producer_id    bigint   NOT NULL,
  producer_epoch smallint NOT NULL,
  first_sequence int      NOT NULL,
  last_sequence  int      NOT NULL,
  base_offset    bigint   NOT NULL,
  last_offset    bigint   NOT NULL,
  PRIMARY KEY (topic_id, partition, producer_id, base_offset),
  FOREIGN KEY (topic_id, partition) REFERENCES weir.partitions
);
"#,
    r#"
CREATE TABLE weir.nodes (
  node_id      text PRIMARY KEY,
  host         text NOT NULL,
  kafka_port   int  NOT NULL,
  http_port    int  NOT NULL,
  pg_port      int  NOT NULL,
  started_at   timestamptz NOT NULL,
  heartbeat_at timestamptz NOT NULL
);
-- One row per lease ever taken; the epoch grows by one each time it changes hands or lapses.
CREATE TABLE weir.leases (
  name       text PRIMARY KEY,
  holder     text NOT NULL,
  epoch      bigint NOT NULL,
  expires_at timestamptz NOT NULL
);
CREATE TABLE weir.group_offsets (
  group_id         text   NOT NULL,
  topic_id         bigint NOT NULL,
  partition        int    NOT NULL,
  committed_offset bigint NOT NULL,
  commit_epoch     bigint NOT NULL,
  PRIMARY KEY (group_id, topic_id, partition),
  FOREIGN KEY (topic_id, partition) REFERENCES weir.partitions
);
"#,
    // What Kafka's OffsetFetch answers beside the offset.
    r#"
ALTER TABLE weir.group_offsets
  ADD COLUMN leader_epoch int    NOT NULL DEFAULT -1,
  ADD COLUMN metadata     text,
  ADD COLUMN commit_ms    bigint NOT NULL DEFAULT 0;
"#,
    // Topic configs set explicitly (Kafka keys to values); defaults are not stored.
    r#"
ALTER TABLE weir.topics ADD COLUMN configs jsonb NOT NULL DEFAULT '{}';
"#,
    // Small trees every node shares (SCRAM users, ACL rules), as a lone node keeps them in sled.
    r#"
CREATE TABLE weir.meta (
  tree  text  NOT NULL,
  key   text  NOT NULL,
  value jsonb NOT NULL,
  PRIMARY KEY (tree, key)
);
"#,
    // Where key compaction of each partition got to: the runs below it were compacted.
    r#"
ALTER TABLE weir.partitions ADD COLUMN clean_offset bigint NOT NULL DEFAULT 0;
"#,
    // What a lease's holder reports of the work it does under it (a consumer group's state
    // and members), for the other nodes to show; cleared whenever the lease is taken.
    r#"
ALTER TABLE weir.leases ADD COLUMN note text;
"#,
];

/// The advisory lock key migrations run under ("weir" in ASCII), so nodes starting together
/// migrate one at a time.
const MIGRATION_LOCK: i64 = 0x7765_6972;

/// Brings the schema to the newest version this node knows and returns that version.
pub async fn migrate(db: &mut Client) -> Result<i32> {
    let known = MIGRATIONS.len() as i32;
    let tx = db.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS weir;
         CREATE TABLE IF NOT EXISTS weir.schema_version (version int NOT NULL);",
    )
    .await?;
    let found: i32 = match tx
        .query_opt("SELECT version FROM weir.schema_version", &[])
        .await?
    {
        Some(row) => row.get(0),
        None => {
            tx.execute("INSERT INTO weir.schema_version VALUES (0)", &[])
                .await?;
            0
        }
    };
    if found > known {
        return Err(ClusterError::SchemaTooNew { found, known });
    }
    for statements in &MIGRATIONS[found as usize..] {
        tx.batch_execute(statements).await?;
    }
    tx.execute("UPDATE weir.schema_version SET version = $1", &[&known])
        .await?;
    tx.commit().await?;
    Ok(known)
}
