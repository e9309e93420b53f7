//! The object store a cluster's data lives in, as its URL names it.
//!
//! - `file:///<directory>`: a directory every node sees (a shared mount).
//! - `s3://<bucket>[/<prefix>]`: a bucket of S3 or of an S3-compatible server. Credentials,
//!   region and endpoint come from the standard `AWS_*` environment variables
//!   (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`, …) and
//!   then from the node's store options (`aws_endpoint=http://…`, `aws_allow_http=true`, …),
//!   which win.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, RetryConfig};

use crate::{ClusterError, Result};

/// Times an S3 request is tried again after a transient failure (a 5xx answer, a reset
/// connection) before its error reaches the flush or read that made it. A produce answered with
/// a retriable error is tried again by its client, so the store's own retries stay short.
const S3_RETRIES_MAX: usize = 3;

/// Longest an S3 request goes on being tried again, from its first attempt.
const S3_RETRY_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens the store `url` names, with `options` for a store that takes them.
pub(crate) fn open(url: &str, options: &[(String, String)]) -> Result<Arc<dyn ObjectStore>> {
    let refused = |reason: String| ClusterError::StoreUrl {
        url: url.to_string(),
        reason,
    };
    if let Some(dir) = url.strip_prefix("file://") {
        if let Some((key, _)) = options.first() {
            return Err(refused(format!(
                "a directory store takes no options (given {key:?})"
            )));
        }
        if !dir.starts_with('/') {
            return Err(refused("the directory must be an absolute path".into()));
        }
        std::fs::create_dir_all(dir).map_err(|e| refused(e.to_string()))?;
        return Ok(Arc::new(
            object_store::local::LocalFileSystem::new_with_prefix(dir)?,
        ));
    }
    let Some(place) = url.strip_prefix("s3://") else {
        return Err(refused(
            "supported: file:///<directory> and s3://<bucket>[/<prefix>]".into(),
        ));
    };
    let (bucket, prefix) = place.split_once('/').unwrap_or((place, ""));
    if bucket.is_empty() {
        return Err(refused("the URL names no bucket".into()));
    }
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_retry(RetryConfig {
            max_retries: S3_RETRIES_MAX,
            retry_timeout: S3_RETRY_TIMEOUT,
            ..RetryConfig::default()
        });
    for (key, value) in options {
        let key: AmazonS3ConfigKey = key
            .to_ascii_lowercase()
            .parse()
            .map_err(|_| refused(format!("{key:?} is not an S3 store option")))?;
        builder = builder.with_config(key, value);
    }
    let store = builder.build()?;
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        return Ok(Arc::new(store));
    }
    let prefix = ObjectPath::parse(prefix).map_err(|e| refused(e.to_string()))?;
    Ok(Arc::new(PrefixStore::new(store, prefix)))
}
