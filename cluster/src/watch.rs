//! Wake-ups for long polls: a commit on any node reaches every node's waiting fetches.
//!
//! Each flush's transaction sends `NOTIFY weir_appended, '<topic id>/<partition>/<end>'` for
//! every partition it advanced; Postgres delivers it to every listener at commit. Each node
//! keeps one connection that listens and fans the notifications out to the fetches waiting
//! here. If that connection drops it is opened again; meanwhile waits end by their timeout,
//! which only delays a consumer, never loses a record (it reads from its offset either way).
//!
//! The same connection hears topic changes ([`TOPICS_CHANNEL`]) and makes the node forget its
//! copy of the topic, and metadata changes ([`META_CHANNEL`]), passed on to whoever keeps a
//! copy; after a reconnection the node forgets every topic and tells those that every tree may
//! have changed, since announcements may have been missed in between.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::meta::META_CHANNEL;
use crate::topics::{TOPICS_CHANNEL, TopicCache};
use crate::{Result, SharedLog};

/// The channel flushes notify on.
pub(crate) const CHANNEL: &str = "weir_appended";

/// Notifications a slow waiter may fall behind by before it re-reads the end instead.
const WAITERS_QUEUE_MAX: usize = 4096;

/// How long the listener waits before connecting again after its connection dropped.
const RECONNECT_MS: u64 = 1_000;

/// A partition's new end, as a flush committed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advanced {
    pub topic_id: i64,
    pub partition: u32,
    pub end: u64,
}

/// The payload a flush sends for a partition it advanced.
pub(crate) fn payload(topic_id: i64, partition: i32, end: u64) -> String {
    format!("{topic_id}/{partition}/{end}")
}

fn parse(payload: &str) -> Option<Advanced> {
    let mut parts = payload.split('/');
    let advanced = Advanced {
        topic_id: parts.next()?.parse().ok()?,
        partition: parts.next()?.parse().ok()?,
        end: parts.next()?.parse().ok()?,
    };
    parts.next().is_none().then_some(advanced)
}

/// Starts the node's listener; it runs as long as the returned sender has receivers or a
/// handle on it. Metadata changes go to `meta`.
pub(crate) fn listen(
    db_url: &str,
    topics: Arc<TopicCache>,
    meta: Arc<broadcast::Sender<String>>,
) -> Arc<broadcast::Sender<Advanced>> {
    let (sender, _) = broadcast::channel(WAITERS_QUEUE_MAX);
    let sender = Arc::new(sender);
    let weak = Arc::downgrade(&sender);
    let db_url = db_url.to_string();
    tokio::spawn(async move {
        loop {
            if let Ok((client, mut connection)) = tokio_postgres::connect(&db_url, NoTls).await {
                let listening = async {
                    let listened = client
                        .batch_execute(&format!(
                            "LISTEN {CHANNEL}; LISTEN {TOPICS_CHANNEL}; LISTEN {META_CHANNEL}"
                        ))
                        .await;
                    if listened.is_ok() {
                        topics.forget_all();
                        let _ = meta.send(String::new());
                    }
                };
                let messages = async {
                    while let Some(Ok(message)) =
                        std::future::poll_fn(|cx| connection.poll_message(cx)).await
                    {
                        let AsyncMessage::Notification(n) = message else {
                            continue;
                        };
                        let Some(sender) = weak.upgrade() else {
                            return;
                        };
                        if n.channel() == TOPICS_CHANNEL {
                            topics.forget(n.payload());
                        } else if n.channel() == META_CHANNEL {
                            let _ = meta.send(n.payload().to_string());
                        } else if let Some(advanced) = parse(n.payload()) {
                            let _ = sender.send(advanced);
                        }
                    }
                };
                // The connection is driven by `messages`; LISTEN completes through it.
                tokio::join!(listening, messages);
            }
            if weak.strong_count() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(RECONNECT_MS)).await;
        }
    });
    sender
}

impl SharedLog {
    /// Every partition end any node's flush commits from now on, as this node's listener hears
    /// them; a receiver that falls more than a few thousand behind skips ahead.
    pub fn subscribe_appended(&self) -> broadcast::Receiver<Advanced> {
        self.appended.subscribe()
    }

    /// Waits until the partition's end is past `offset` or `timeout` passed, and returns its
    /// end: how a fetch with nothing to read yet long-polls.
    pub async fn wait_for_end(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        timeout: Duration,
    ) -> Result<u64> {
        let topic_id = self.topic_id(topic, partition).await?;
        // Subscribe before reading the end, so a commit in between is not missed.
        let mut advanced = self.appended.subscribe();
        let (_, end) = self.offsets(topic, partition).await?;
        if end > offset {
            return Ok(end);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, advanced.recv()).await {
                Ok(Ok(a)) if a.topic_id == topic_id && a.partition == partition => {
                    if a.end > offset {
                        return Ok(a.end);
                    }
                }
                Ok(Ok(_)) => {}
                // Fell behind or the listener stopped: the database knows the end.
                Ok(Err(_)) | Err(_) => return Ok(self.offsets(topic, partition).await?.1),
            }
        }
    }
}
