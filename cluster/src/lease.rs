//! Leases: one node at a time acts for a name (a consumer group's coordinator, a pipeline,
//! retention, garbage collection), fenced by an epoch.
//!
//! Taking a lease that is free or expired raises its epoch; a write made under a lease checks,
//! in its own transaction, that the lease still has that holder and epoch, so a node that lost
//! it (paused, cut off from the database) cannot write under it afterwards. A holder also stops
//! acting on its own once [`Lease::is_current`] says its last renewal is older than two thirds
//! of the lease, before the database would let anyone else take it. Lease times are the
//! database's; the holder's own check uses its monotonic clock from before it asked.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weir_storage::locks::lock;

use crate::{ClusterError, Result, SharedLog};

/// Longest lease a node may take.
pub const LEASE_MS_MAX: u64 = 600_000;

/// Longest lease name or consumer group id, in bytes. Both are keys of Postgres indexes, whose
/// entries cannot pass about 2.7 kB; a name carries a prefix and a client's id (a group's).
pub const NAME_BYTES_MAX: usize = 1024;

/// Longest note a lease's holder may leave on it ([`SharedLog::note_leases`]).
pub const LEASE_NOTE_BYTES_MAX: usize = 64 << 10;

/// Most offsets one commit may carry: one transaction holds them all.
pub const COMMIT_OFFSETS_MAX: usize = 10_000;

/// Longest metadata string a committed offset carries.
pub const OFFSET_METADATA_BYTES_MAX: usize = 4096;

/// A consumer group's committed position in one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupOffset {
    pub topic: String,
    pub partition: u32,
    /// The next offset the group reads, as the client committed it.
    pub offset: i64,
    /// The leader epoch the client saw at `offset`; -1 when it sent none.
    pub leader_epoch: i32,
    /// The client's own note, at most [`OFFSET_METADATA_BYTES_MAX`] bytes.
    pub metadata: Option<String>,
    /// When the node took the commit, in ms since the Unix epoch.
    pub commit_ms: i64,
}

impl GroupOffset {
    /// A position with no epoch, metadata or time.
    pub fn new(topic: &str, partition: u32, offset: i64) -> GroupOffset {
        GroupOffset {
            topic: topic.to_string(),
            partition,
            offset,
            leader_epoch: -1,
            metadata: None,
            commit_ms: 0,
        }
    }
}

/// A live lease, as any node reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    pub name: String,
    pub holder: String,
    pub epoch: i64,
    /// How long it runs unless its holder renews it.
    pub expires_in_ms: i64,
    /// What its holder reports of the work it does under it.
    pub note: Option<String>,
}

/// A lease this node holds. Its clones are the same hold: renewing one keeps them all
/// current, so a job can act under a lease that another task renews.
#[derive(Debug, Clone)]
pub struct Lease {
    name: String,
    epoch: i64,
    duration: Duration,
    /// When the last acquire or renewal was sent: the lease runs at least until then plus
    /// `duration` in the database.
    asked_at: Arc<Mutex<Instant>>,
}

impl Lease {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    /// Whether the holder may still act: its last renewal is younger than two thirds of the
    /// lease, which leaves a third for clocks and delays before anyone else can take it.
    pub fn is_current(&self) -> bool {
        self.asked_at().elapsed() < self.duration * 2 / 3
    }

    /// Whether a third of the lease has passed since its last renewal: renewing then keeps it
    /// current with a third to spare, and renewing sooner only writes the row more often.
    pub fn renewal_due(&self) -> bool {
        self.asked_at().elapsed() >= self.duration / 3
    }

    fn asked_at(&self) -> Instant {
        *lock(&self.asked_at)
    }
}

impl SharedLog {
    /// Takes the lease `name` for `duration_ms` if it is free, expired or already this node's,
    /// and clears its note: the taker starts its work afresh. `None` when another node holds
    /// it.
    pub async fn acquire(&self, name: &str, duration_ms: u64) -> Result<Option<Lease>> {
        let taken = self.acquire_noted(name, duration_ms).await?;
        Ok(taken.map(|(lease, _)| lease))
    }

    /// [`SharedLog::acquire`], answering also the note the lease carried before, as its last
    /// holder left it.
    pub async fn acquire_noted(
        &self,
        name: &str,
        duration_ms: u64,
    ) -> Result<Option<(Lease, Option<String>)>> {
        check_name("lease name", name)?;
        let duration = lease_duration(duration_ms)?;
        let asked_at = Instant::now();
        // The epoch moves on only when the lease changes hands (or lapsed in between).
        let row = self
            .db()
            .await?
            .query_opt(
                "WITH prior AS (SELECT note FROM weir.leases WHERE name = $1)
                 INSERT INTO weir.leases AS l (name, holder, epoch, expires_at)
                 VALUES ($1, $2, 1, now() + make_interval(secs => $3::float8 / 1000))
                 ON CONFLICT (name) DO UPDATE SET
                   epoch = CASE WHEN l.holder = $2 AND l.expires_at > now() THEN l.epoch
                                ELSE l.epoch + 1 END,
                   holder = $2,
                   expires_at = now() + make_interval(secs => $3::float8 / 1000),
                   note = NULL
                 WHERE l.holder = $2 OR l.expires_at <= now()
                 RETURNING epoch, (SELECT note FROM prior)",
                &[&name, &self.node_id, &(duration_ms as f64)],
            )
            .await?;
        Ok(row.map(|row| {
            let lease = Lease {
                name: name.to_string(),
                epoch: row.get(0),
                duration,
                asked_at: Arc::new(Mutex::new(asked_at)),
            };
            (lease, row.get(1))
        }))
    }

    /// Extends a lease this node holds. An error when it was lost (expired and taken, or
    /// expired): the node must stop acting for it.
    pub async fn renew(&self, lease: &mut Lease) -> Result<()> {
        let mut held = vec![lease.clone()];
        if let Some(lost_lease) = self.renew_all(&mut held).await?.first() {
            return Err(lost(lost_lease));
        }
        *lease = held.remove(0);
        Ok(())
    }

    /// Extends every lease in `leases` in one statement. Those that were lost leave `leases`
    /// and are returned: the node must stop acting for them.
    pub async fn renew_all(&self, leases: &mut Vec<Lease>) -> Result<Vec<Lease>> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let asked_at = Instant::now();
        let names: Vec<&str> = leases.iter().map(|l| l.name.as_str()).collect();
        let epochs: Vec<i64> = leases.iter().map(|l| l.epoch).collect();
        let millis: Vec<f64> = leases
            .iter()
            .map(|l| l.duration.as_millis() as f64)
            .collect();
        let renewed: std::collections::HashSet<String> = self
            .db()
            .await?
            .query(
                "UPDATE weir.leases l
                 SET expires_at = now() + make_interval(secs => h.ms / 1000)
                 FROM unnest($1::text[], $2::int8[], $3::float8[]) AS h(name, epoch, ms)
                 WHERE l.name = h.name AND l.epoch = h.epoch AND l.holder = $4
                   AND l.expires_at > now()
                 RETURNING l.name",
                &[&names, &epochs, &millis, &self.node_id],
            )
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        let (kept, lost): (Vec<Lease>, Vec<Lease>) =
            leases.drain(..).partition(|l| renewed.contains(&l.name));
        *leases = kept;
        for lease in leases.iter_mut() {
            let mut renewed = lock(&lease.asked_at);
            *renewed = (*renewed).max(asked_at);
        }
        Ok(lost)
    }

    /// Gives a lease up at once, so another node can take it without waiting for it to expire.
    pub async fn release(&self, lease: Lease) -> Result<()> {
        self.release_all(&[lease]).await
    }

    /// Gives every lease of `leases` up at once, in one statement.
    pub async fn release_all(&self, leases: &[Lease]) -> Result<()> {
        if leases.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = leases.iter().map(|l| l.name.as_str()).collect();
        let epochs: Vec<i64> = leases.iter().map(|l| l.epoch).collect();
        self.db()
            .await?
            .execute(
                "UPDATE weir.leases l SET expires_at = now()
                 FROM unnest($1::text[], $2::int8[]) AS h(name, epoch)
                 WHERE l.name = h.name AND l.epoch = h.epoch AND l.holder = $3",
                &[&names, &epochs, &self.node_id],
            )
            .await?;
        Ok(())
    }

    /// Leaves a note on each lease of `notes` this node still holds, in one statement; those
    /// it lost are left alone. Each note is at most [`LEASE_NOTE_BYTES_MAX`] bytes.
    pub async fn note_leases(&self, notes: &[(&Lease, &str)]) -> Result<()> {
        if let Some((lease, note)) = notes.iter().find(|(_, n)| n.len() > LEASE_NOTE_BYTES_MAX) {
            return Err(ClusterError::InvalidRequest(format!(
                "a note of {} bytes on lease {}, allowed at most {LEASE_NOTE_BYTES_MAX}",
                note.len(),
                lease.name
            )));
        }
        if notes.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = notes.iter().map(|(l, _)| l.name.as_str()).collect();
        let epochs: Vec<i64> = notes.iter().map(|(l, _)| l.epoch).collect();
        let texts: Vec<&str> = notes.iter().map(|(_, n)| *n).collect();
        self.db()
            .await?
            .execute(
                "UPDATE weir.leases l SET note = h.note
                 FROM unnest($1::text[], $2::int8[], $3::text[]) AS h(name, epoch, note)
                 WHERE l.name = h.name AND l.epoch = h.epoch AND l.holder = $4
                   AND l.expires_at > now()",
                &[&names, &epochs, &texts, &self.node_id],
            )
            .await?;
        Ok(())
    }

    /// The live leases whose names start with `prefix`, by name: at most `limit` of them, or
    /// all when `None`.
    pub async fn live_leases(&self, prefix: &str, limit: Option<i64>) -> Result<Vec<LeaseRow>> {
        let rows = self
            .db()
            .await?
            .query(
                "SELECT name, holder, epoch,
                        (extract(epoch FROM expires_at - now()) * 1000)::int8, note
                 FROM weir.leases WHERE starts_with(name, $1) AND expires_at > now()
                 ORDER BY name LIMIT $2",
                &[&prefix, &limit],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| LeaseRow {
                name: r.get(0),
                holder: r.get(1),
                epoch: r.get(2),
                expires_in_ms: r.get(3),
                note: r.get(4),
            })
            .collect())
    }

    /// The node holding `name` now, and its epoch; `None` if free or expired.
    pub async fn lease_holder(&self, name: &str) -> Result<Option<(String, i64)>> {
        check_name("lease name", name)?;
        let row = self
            .db()
            .await?
            .query_opt(
                "SELECT holder, epoch FROM weir.leases WHERE name = $1 AND expires_at > now()",
                &[&name],
            )
            .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// Commits a consumer group's offsets under the group's lease: all or none, and none if
    /// the lease has moved on (a newer epoch or another holder).
    pub async fn commit_offsets(
        &self,
        lease: &Lease,
        group: &str,
        offsets: &[GroupOffset],
    ) -> Result<()> {
        check_name("group id", group)?;
        if offsets.len() > COMMIT_OFFSETS_MAX {
            return Err(ClusterError::InvalidRequest(format!(
                "a commit of {} offsets, allowed at most {COMMIT_OFFSETS_MAX}",
                offsets.len()
            )));
        }
        if let Some(long) = offsets
            .iter()
            .filter_map(|o| o.metadata.as_ref())
            .find(|m| m.len() > OFFSET_METADATA_BYTES_MAX)
        {
            return Err(ClusterError::InvalidRequest(format!(
                "offset metadata of {} bytes, allowed at most {OFFSET_METADATA_BYTES_MAX}",
                long.len()
            )));
        }
        let mut ids = Vec::with_capacity(offsets.len());
        for o in offsets {
            ids.push(self.topic_id(&o.topic, o.partition).await?);
        }
        let mut db = self.db().await?;
        let tx = db.transaction().await?;
        check_held(&tx, lease, &self.node_id).await?;
        for (o, topic_id) in offsets.iter().zip(ids) {
            tx.execute(
                "INSERT INTO weir.group_offsets (group_id, topic_id, partition,
                   committed_offset, commit_epoch, leader_epoch, metadata, commit_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (group_id, topic_id, partition) DO UPDATE
                   SET committed_offset = $4, commit_epoch = $5, leader_epoch = $6,
                       metadata = $7, commit_ms = $8",
                &[
                    &group,
                    &topic_id,
                    &(o.partition as i32),
                    &o.offset,
                    &lease.epoch,
                    &o.leader_epoch,
                    &o.metadata,
                    &o.commit_ms,
                ],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Deletes a group's committed offsets under its lease: of one partition, or all of them.
    /// How many there were.
    pub async fn delete_offsets(
        &self,
        lease: &Lease,
        group: &str,
        only: Option<(&str, u32)>,
    ) -> Result<u64> {
        check_name("group id", group)?;
        let partition = match only {
            Some((topic, partition)) => Some((self.topic_id(topic, partition).await?, partition)),
            None => None,
        };
        let mut db = self.db().await?;
        let tx = db.transaction().await?;
        check_held(&tx, lease, &self.node_id).await?;
        let deleted = match partition {
            Some((topic_id, partition)) => {
                tx.execute(
                    "DELETE FROM weir.group_offsets
                     WHERE group_id = $1 AND topic_id = $2 AND partition = $3",
                    &[&group, &topic_id, &(partition as i32)],
                )
                .await?
            }
            None => {
                tx.execute(
                    "DELETE FROM weir.group_offsets WHERE group_id = $1",
                    &[&group],
                )
                .await?
            }
        };
        tx.commit().await?;
        Ok(deleted)
    }

    /// The groups with committed offsets, by id.
    pub async fn group_ids(&self) -> Result<Vec<String>> {
        let rows = self
            .db()
            .await?
            .query(
                "SELECT DISTINCT group_id FROM weir.group_offsets ORDER BY group_id",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// A group's committed offsets, by topic and partition.
    pub async fn committed_offsets(&self, group: &str) -> Result<Vec<GroupOffset>> {
        check_name("group id", group)?;
        let rows = self
            .db()
            .await?
            .query(
                "SELECT t.name, o.partition, o.committed_offset, o.leader_epoch, o.metadata,
                        o.commit_ms
                 FROM weir.group_offsets o JOIN weir.topics t USING (topic_id)
                 WHERE o.group_id = $1 ORDER BY t.name, o.partition",
                &[&group],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| GroupOffset {
                topic: r.get(0),
                partition: r.get::<_, i32>(1) as u32,
                offset: r.get(2),
                leader_epoch: r.get(3),
                metadata: r.get(4),
                commit_ms: r.get(5),
            })
            .collect())
    }
}

/// Fails unless `lease` still has this holder and epoch. FOR SHARE: a concurrent take of the
/// lease waits for the rest of `tx`, or `tx` waits for the take and then fails.
pub(crate) async fn check_held(
    tx: &tokio_postgres::Transaction<'_>,
    lease: &Lease,
    node_id: &str,
) -> Result<()> {
    let held = tx
        .query_opt(
            "SELECT 1 FROM weir.leases
             WHERE name = $1 AND holder = $2 AND epoch = $3 AND expires_at > now()
             FOR SHARE",
            &[&lease.name, &node_id, &lease.epoch],
        )
        .await?;
    match held {
        Some(_) => Ok(()),
        None => Err(lost(lease)),
    }
}

fn check_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > NAME_BYTES_MAX {
        return Err(ClusterError::InvalidRequest(format!(
            "{what} of {} bytes, allowed 1 to {NAME_BYTES_MAX}",
            name.len()
        )));
    }
    Ok(())
}

fn lease_duration(duration_ms: u64) -> Result<Duration> {
    if duration_ms == 0 || duration_ms > LEASE_MS_MAX {
        return Err(ClusterError::Config(format!(
            "lease of {duration_ms} ms is outside 1 to {LEASE_MS_MAX}"
        )));
    }
    Ok(Duration::from_millis(duration_ms))
}

pub(crate) fn lost(lease: &Lease) -> ClusterError {
    ClusterError::LeaseLost {
        name: lease.name.clone(),
        epoch: lease.epoch,
    }
}
