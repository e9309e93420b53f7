//! Membership and leases against a real Postgres.

mod common;

use std::time::Duration;

use common::{append, cluster, flush, two_nodes, values};
use weir_cluster::lease::{COMMIT_OFFSETS_MAX, LEASE_MS_MAX, LEASE_NOTE_BYTES_MAX, NAME_BYTES_MAX};
use weir_cluster::status::LEASES_LISTED_MAX;
use weir_cluster::{ClusterError, Lease, NodeInfo, SharedLog, leader};
use weir_cluster::{GroupOffset, OFFSET_METADATA_BYTES_MAX};
use weir_storage::decode_records;

fn info(node_id: &str, kafka_port: u16) -> NodeInfo {
    NodeInfo {
        node_id: node_id.to_string(),
        host: "127.0.0.1".to_string(),
        kafka_port,
        http_port: kafka_port + 1,
        pg_port: kafka_port + 2,
    }
}

fn ids(nodes: &[NodeInfo]) -> Vec<&str> {
    nodes.iter().map(|n| n.node_id.as_str()).collect()
}

#[tokio::test]
async fn live_nodes_are_those_with_a_recent_heartbeat_and_leaders_spread_over_them() {
    let Some((pg, _store, store_url)) = cluster() else {
        return;
    };
    let url = pg.url();
    let mut nodes = Vec::new();
    for (i, id) in ["n1", "n2", "n3"].iter().enumerate() {
        let node = SharedLog::open(&url, &store_url, id).await.expect("open");
        node.register(&info(id, 9000 + 10 * i as u16))
            .await
            .expect("register");
        nodes.push(node);
    }
    let live = nodes[0].live_nodes(10_000).await.expect("live");
    assert_eq!(ids(&live), ["n1", "n2", "n3"]);
    assert_eq!(live[1], info("n2", 9010));

    // n3 stops renewing; the others renew past a one-second session timeout.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    nodes[0].heartbeat().await.expect("heartbeat");
    nodes[1].heartbeat().await.expect("heartbeat");
    let after = nodes[1].live_nodes(1_000).await.expect("live");
    assert_eq!(ids(&after), ["n1", "n2"]);

    // Leaders: every node leads some partitions, and losing n3 moves only n3's partitions.
    let partitions = 300u32;
    let mut led = [0u32; 3];
    for p in 0..partitions {
        let before = leader("logs", p, &live).expect("a leader");
        let index = ids(&live)
            .iter()
            .position(|id| *id == before.node_id)
            .expect("known");
        led[index] += 1;
        let now = leader("logs", p, &after).expect("a leader");
        if before.node_id != "n3" {
            assert_eq!(
                now.node_id, before.node_id,
                "partition {p} moved without cause"
            );
        }
    }
    assert!(led.iter().all(|&n| n >= 60), "uneven spread: {led:?}");
    assert!(leader("logs", 0, &[]).is_none());

    nodes[1].leave().await.expect("leave");
    let left = nodes[0].live_nodes(1_000).await.expect("live");
    assert_eq!(ids(&left), ["n1"]);
}

#[tokio::test]
async fn a_lease_has_one_holder_and_a_lost_lease_fences_its_writes() {
    let Some((pg, _store, store_url)) = cluster() else {
        return;
    };
    let (a, b) = two_nodes(&pg, &store_url, 2).await;

    let mut lease = common::taken(&a, "group:g", 1_000).await;
    assert_eq!(lease.epoch(), 1);
    assert!(
        b.acquire("group:g", 1_000)
            .await
            .expect("acquire")
            .is_none()
    );
    let again = common::taken(&a, "group:g", 1_000).await;
    assert_eq!(again.epoch(), 1, "holding it again is not a new epoch");
    a.renew(&mut lease).await.expect("renew");
    assert_eq!(
        a.lease_holder("group:g").await.expect("holder"),
        Some(("n1".to_string(), 1))
    );
    // The holder leaves a note on its lease, which every node reads.
    let notes = async |node: &SharedLog| {
        let leases = node.live_leases("group:", None).await.expect("leases");
        let seen = leases.into_iter().map(|l| (l.name, l.holder, l.note));
        seen.collect::<Vec<_>>()
    };
    let noted_by = |node: &str, note: Option<&str>| {
        let note = note.map(str::to_string);
        vec![("group:g".to_string(), node.to_string(), note)]
    };
    assert_eq!(notes(&b).await, noted_by("n1", None));
    a.note_leases(&[(&lease, "stable")]).await.expect("note");
    assert_eq!(notes(&b).await, noted_by("n1", Some("stable")));
    let offsets = |o: i64| {
        vec![
            GroupOffset::new("logs", 0, o),
            GroupOffset::new("logs", 1, o + 1),
        ]
    };
    a.commit_offsets(&lease, "g", &offsets(5))
        .await
        .expect("commit");
    let noted = GroupOffset {
        leader_epoch: 4,
        metadata: Some("from a".into()),
        commit_ms: 1_700_000_000_000,
        ..GroupOffset::new("logs", 1, 6)
    };
    a.commit_offsets(&lease, "g", std::slice::from_ref(&noted))
        .await
        .expect("commit");
    assert_eq!(
        a.committed_offsets("g").await.expect("offsets"),
        vec![GroupOffset::new("logs", 0, 5), noted],
        "epoch, metadata and time come back as committed"
    );
    // Many leases renew in one statement; one taken by nobody but lapsed is reported lost.
    let mut many = vec![lease.clone(), common::taken(&a, "group:h", 1_000).await];
    let lost = a.renew_all(&mut many).await.expect("renew all");
    assert!(lost.is_empty() && many.len() == 2, "{lost:?}");

    // n1 goes quiet past its lease; n2 takes it with a new epoch.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert!(
        !lease.is_current(),
        "the holder stops acting before anyone can take over"
    );
    let taken = common::taken(&b, "group:g", 1_000).await;
    assert_eq!(taken.epoch(), 2);
    // Taking the lease clears the note; the node that lost it cannot write one.
    assert_eq!(notes(&b).await, noted_by("n2", None));
    a.note_leases(&[(&lease, "stale")]).await.expect("note");
    assert_eq!(notes(&b).await, noted_by("n2", None));
    b.note_leases(&[(&taken, "rebalancing")])
        .await
        .expect("note");
    assert_eq!(notes(&a).await, noted_by("n2", Some("rebalancing")));
    let stale = a.commit_offsets(&lease, "g", &offsets(3)).await;
    assert!(
        matches!(stale, Err(ClusterError::LeaseLost { epoch: 1, .. })),
        "{stale:?}"
    );
    assert!(matches!(
        a.renew(&mut lease).await,
        Err(ClusterError::LeaseLost { .. })
    ));
    b.commit_offsets(&taken, "g", &offsets(7))
        .await
        .expect("commit");
    assert_eq!(
        a.committed_offsets("g").await.expect("offsets"),
        offsets(7),
        "the fenced commit wrote nothing"
    );
    let stale = a.delete_offsets(&lease, "g", None).await;
    assert!(
        matches!(stale, Err(ClusterError::LeaseLost { .. })),
        "{stale:?}"
    );
    let lost = a.renew_all(&mut many).await.expect("renew all");
    assert_eq!(lost.len(), 2, "both lapsed; one was taken");
    assert!(many.is_empty());
    let unknown = b
        .commit_offsets(&taken, "g", &[GroupOffset::new("logs", 2, 1)])
        .await;
    assert!(
        matches!(unknown, Err(ClusterError::UnknownPartition { .. })),
        "{unknown:?}"
    );

    assert_eq!(
        b.delete_offsets(&taken, "g", Some(("logs", 1)))
            .await
            .expect("delete"),
        1
    );
    assert_eq!(
        b.committed_offsets("g").await.expect("offsets"),
        vec![GroupOffset::new("logs", 0, 7)]
    );
    assert_eq!(b.group_ids().await.expect("ids"), vec!["g".to_string()]);

    // Released, it can be taken at once; many are released in one statement, and a lease
    // given up by a node that no longer holds it stays with its holder.
    let mine = common::taken(&b, "mine", 60_000).await;
    let theirs = common::taken(&a, "theirs", 60_000).await;
    b.release_all(&[taken, mine, theirs.clone()])
        .await
        .expect("release");
    assert_eq!(a.lease_holder("group:g").await.expect("holder"), None);
    assert_eq!(a.lease_holder("mine").await.expect("holder"), None);
    assert_eq!(
        a.lease_holder("theirs").await.expect("holder"),
        Some(("n1".to_string(), theirs.epoch()))
    );
    a.release(theirs).await.expect("release");
    assert!(
        notes(&a).await.is_empty(),
        "a lapsed lease's note is not read"
    );
    let back = common::taken(&a, "group:g", 1_000).await;
    assert_eq!(back.epoch(), 3);
    for ms in [0, LEASE_MS_MAX + 1] {
        assert!(matches!(
            a.acquire("x", ms).await,
            Err(ClusterError::Config(_))
        ));
    }

    // Names, group ids and commits past their bounds are refused before the database.
    let long = "g".repeat(NAME_BYTES_MAX + 1);
    for refused in [
        a.acquire("", 1_000).await.map(|_| ()),
        a.acquire(&long, 1_000).await.map(|_| ()),
        a.lease_holder(&long).await.map(|_| ()),
        a.committed_offsets(&long).await.map(|_| ()),
        a.commit_offsets(&back, &long, &offsets(1)).await,
        a.note_leases(&[(&back, &"n".repeat(LEASE_NOTE_BYTES_MAX + 1))])
            .await,
        a.commit_offsets(
            &back,
            "g",
            &vec![GroupOffset::new("logs", 0, 1); COMMIT_OFFSETS_MAX + 1],
        )
        .await,
        a.commit_offsets(
            &back,
            "g",
            &[GroupOffset {
                metadata: Some("m".repeat(OFFSET_METADATA_BYTES_MAX + 1)),
                ..GroupOffset::new("logs", 0, 1)
            }],
        )
        .await,
    ] {
        assert!(
            matches!(refused, Err(ClusterError::InvalidRequest(_))),
            "{refused:?}"
        );
    }
    let longest = "g".repeat(NAME_BYTES_MAX);
    let lease = common::taken(&a, &longest, 1_000).await;
    a.commit_offsets(&lease, &longest, &offsets(9))
        .await
        .expect("a name at the bound is a key Postgres indexes");

    // A clone of a lease is the same hold: a job acts under one while a task renews the other.
    let job = common::taken(&a, "job", 1_000).await;
    let mut renewer = job.clone();
    assert!(!job.renewal_due(), "just taken");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(job.renewal_due(), "a third of the lease has run");
    a.renew(&mut renewer).await.expect("renew");
    assert!(!job.renewal_due(), "just renewed, through its clone");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(job.is_current(), "renewed 400 ms ago, through its clone");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!job.is_current(), "not renewed for 800 ms");

    // The status lists the live leases up to its bound, and counts them all.
    let more = LEASES_LISTED_MAX + 1;
    for i in 0..more {
        let name = format!("many:{i:04}");
        common::taken(&a, &name, 60_000).await;
    }
    let (listed, total) = b.leases().await.expect("leases");
    assert_eq!(listed.len() as i64, LEASES_LISTED_MAX);
    assert!(total >= more, "{total} live leases, {more} of them many:");
    assert!(listed.windows(2).all(|w| w[0].name < w[1].name), "by name");
    assert!(listed.iter().all(|l| l.expires_in_ms > 0 && l.epoch >= 1));
}

#[tokio::test]
async fn a_lost_lease_fences_the_appends_and_metadata_written_under_it() {
    let Some((pg, _store, store_url)) = cluster() else {
        return;
    };
    let (a, b) = two_nodes(&pg, &store_url, 1).await;
    let (tree, key) = ("pipeline-checkpoints", "p");
    let appended = async |node: &SharedLog, lease: &Lease, value: &str| {
        let checked = node.check(append("logs", 0, &[value])).await?;
        let mut answers = node.flush(&[checked], Some(lease)).await?;
        answers.remove(0)
    };

    let lease = common::taken(&a, "pipeline:p", 1_000).await;
    let first = appended(&a, &lease, "first").await;
    assert_eq!(first.expect("the holder appends"), 0);
    a.meta_put(tree, key, b"1", Some(&lease))
        .await
        .expect("the holder saves");

    // n1 goes quiet past its lease; n2 takes it.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let taken = common::taken(&b, "pipeline:p", 1_000).await;
    let stale = appended(&a, &lease, "stale").await;
    assert!(
        matches!(stale, Err(ClusterError::LeaseLost { epoch: 1, .. })),
        "{stale:?}"
    );
    let stale = a.meta_put(tree, key, b"2", Some(&lease)).await;
    assert!(
        matches!(stale, Err(ClusterError::LeaseLost { epoch: 1, .. })),
        "{stale:?}"
    );
    let second = appended(&b, &taken, "second").await;
    assert_eq!(second.expect("the new holder appends"), 1);
    b.meta_put(tree, key, b"3", Some(&taken))
        .await
        .expect("the new holder saves");

    let fetched = a.read("logs", 0, 0, 1 << 20).await.expect("read");
    let read = values(&decode_records(&fetched.batches).expect("valid batches"));
    assert_eq!(
        read,
        vec![(0, "first".to_string()), (1, "second".to_string())],
        "the fenced append left nothing"
    );
    assert_eq!(
        a.meta_get(tree, key).await.expect("get"),
        Some(b"3".to_vec()),
        "the fenced save left nothing"
    );
}

#[tokio::test]
async fn a_long_poll_wakes_when_another_node_commits_to_its_partition() {
    let Some((pg, _store, store_url)) = cluster() else {
        return;
    };
    let (a, b) = two_nodes(&pg, &store_url, 2).await;
    // Let both listeners subscribe before anything is committed.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let minute = Duration::from_secs(60);
    let waiting = b.wait_for_end("logs", 0, 0, minute);
    let appending = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        // A commit to the other partition does not end the wait.
        flush(&a, &[append("logs", 1, &["other"])])
            .await
            .expect("flush p1");
        tokio::time::sleep(Duration::from_millis(300)).await;
        flush(&a, &[append("logs", 0, &["x", "y"])])
            .await
            .expect("flush p0")
    };
    let (woken, bases) = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(waiting, appending)
    })
    .await
    .expect("woken by the commit, long before the minute");
    assert_eq!(bases, vec![0]);
    assert_eq!(woken.expect("an end"), 2);

    // Already past the offset: no wait. Nothing new: the end at the timeout.
    assert_eq!(b.wait_for_end("logs", 0, 1, minute).await.expect("end"), 2);
    let short = Duration::from_millis(200);
    assert_eq!(b.wait_for_end("logs", 0, 2, short).await.expect("end"), 2);
    assert!(matches!(
        b.wait_for_end("logs", 2, 0, short).await,
        Err(ClusterError::UnknownPartition { .. })
    ));

    // After the database restarts, the listener connects again and wakes waiters as before.
    pg.stop();
    pg.start_again();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let waiting = b.wait_for_end("logs", 1, 1, minute);
    let appending = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        flush(&a, &[append("logs", 1, &["after"])])
            .await
            .expect("flush")
    };
    let (woken, _) = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(waiting, appending)
    })
    .await
    .expect("woken after the restart");
    assert_eq!(woken.expect("an end"), 2);
}
