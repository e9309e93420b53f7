//! Wake-ups for long-polling fetches: a fetch waits on the partitions it reads, and an append
//! wakes only the fetches waiting on its partition.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;
use weir_storage::locks;

/// The partitions some fetch waits on, each with the wake-up its waiters share. An entry lives
/// while a fetch holds it; the ones no fetch holds are dropped once the map has grown to twice
/// what the last sweep kept, so a sweep costs about as much as the entries added since.
#[derive(Default)]
pub struct Appends {
    waited: Mutex<Waited>,
}

#[derive(Default)]
struct Waited {
    by_topic: HashMap<String, HashMap<u32, Weak<Notify>>>,
    entries: usize,
    /// Entries the last sweep kept.
    kept: usize,
}

/// Entries added before the first sweep.
const SWEEP_ENTRIES_MIN: usize = 64;

impl Appends {
    /// The wake-up of `topic`/`partition`, shared by every fetch waiting on it; the entry stays
    /// while the returned handle is held.
    pub fn of(&self, topic: &str, partition: u32) -> Arc<Notify> {
        let mut waited = locks::lock(&self.waited);
        let held = waited.by_topic.get(topic).and_then(|p| p.get(&partition));
        if let Some(notify) = held.and_then(Weak::upgrade) {
            return notify;
        }
        let notify = Arc::new(Notify::new());
        let replaced = waited
            .by_topic
            .entry(topic.to_owned())
            .or_default()
            .insert(partition, Arc::downgrade(&notify));
        if replaced.is_none() {
            waited.entries += 1;
        }
        if waited.entries > 2 * waited.kept + SWEEP_ENTRIES_MIN {
            waited.by_topic.retain(|_, partitions| {
                partitions.retain(|_, w| w.strong_count() > 0);
                !partitions.is_empty()
            });
            waited.entries = waited.by_topic.values().map(HashMap::len).sum();
            waited.kept = waited.entries;
        }
        notify
    }

    /// Wakes the fetches waiting on `topic`/`partition`, if any.
    pub fn appended(&self, topic: &str, partition: u32) {
        let notify = locks::lock(&self.waited)
            .by_topic
            .get(topic)
            .and_then(|p| p.get(&partition))
            .and_then(Weak::upgrade);
        if let Some(notify) = notify {
            notify.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_append_wakes_only_the_waiters_of_its_partition() {
        let appends = Appends::default();
        let (a0, a1) = (appends.of("a", 0), appends.of("a", 1));
        assert!(Arc::ptr_eq(&a0, &appends.of("a", 0)));
        {
            let (w0, w1) = (a0.notified(), a1.notified());
            tokio::pin!(w0, w1);
            appends.appended("a", 1);
            appends.appended("b", 0);
            let now = futures::poll!(&mut w0);
            assert!(
                now.is_pending(),
                "an append to another partition woke a waiter"
            );
            assert!(futures::poll!(&mut w1).is_ready());
        }
        // Entries no fetch holds are swept as others are added: the map stays bounded.
        drop((a0, a1));
        let held = appends.of("b", 0);
        for partition in 0..1000 {
            appends.of("c", partition);
        }
        let waited = locks::lock(&appends.waited);
        assert!(
            waited.entries <= 2 * SWEEP_ENTRIES_MIN + 2,
            "{} entries",
            waited.entries
        );
        assert!(Weak::ptr_eq(
            &waited.by_topic["b"][&0],
            &Arc::downgrade(&held)
        ));
    }
}
