//! The object store a cluster's data lives in, as its URL names it.
//!
//! - `file:///<directory>`: a directory every node sees (a shared mount).
//! - `s3://<bucket>[/<prefix>]`: a bucket of S3 or of an S3-compatible server. Credentials,
//!   region and endpoint come from the standard `AWS_*` environment variables
//!   (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`, …) and
//!   then from the node's store options (`aws_endpoint=http://…`, `aws_allow_http=true`, …),
//!   which win.
//! - `az://<container>[/<prefix>]`: a container of Azure Blob Storage, configured from the
//!   `AZURE_*` variables (`AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY`, …) and
//!   then the `azure_*` options.
//! - `gs://<bucket>[/<prefix>]`: a bucket of Google Cloud Storage, configured from the
//!   `GOOGLE_*` variables (`GOOGLE_SERVICE_ACCOUNT`, `GOOGLE_SERVICE_ACCOUNT_KEY`,
//!   `GOOGLE_APPLICATION_CREDENTIALS`, …; the instance's metadata server when none are given)
//!   and then the `google_*` options.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, RetryConfig};

use crate::{ClusterError, Result};

/// Times a request to a cloud store is tried again after a transient failure (a 5xx answer, a
/// reset connection) before its error reaches the flush or read that made it. A produce
/// answered with a retriable error is tried again by its client, so the store's own retries
/// stay short.
const STORE_RETRIES_MAX: usize = 3;

/// Longest a request to a cloud store goes on being tried again, from its first attempt.
const STORE_RETRY_TIMEOUT: Duration = Duration::from_secs(10);

/// What the store URLs may name.
const SUPPORTED: &str = "supported: file:///<directory>, s3://<bucket>[/<prefix>], \
     az://<container>[/<prefix>] and gs://<bucket>[/<prefix>]";

/// Opens the store `url` names, with `options` for a store that takes them.
pub(crate) fn open(url: &str, options: &[(String, String)]) -> Result<Arc<dyn ObjectStore>> {
    let refused = |reason: String| ClusterError::StoreUrl {
        url: url.to_string(),
        reason,
    };
    let Some((scheme, place)) = url.split_once("://") else {
        return Err(refused(SUPPORTED.into()));
    };
    if scheme == "file" {
        if let Some((key, _)) = options.first() {
            return Err(refused(format!(
                "a directory store takes no options (given {key:?})"
            )));
        }
        if !place.starts_with('/') {
            return Err(refused("the directory must be an absolute path".into()));
        }
        std::fs::create_dir_all(place).map_err(|e| refused(e.to_string()))?;
        return Ok(Arc::new(
            object_store::local::LocalFileSystem::new_with_prefix(place)?,
        ));
    }
    let (bucket, prefix) = place.split_once('/').unwrap_or((place, ""));
    if bucket.is_empty() {
        return Err(refused("the URL names no bucket".into()));
    }
    let retry = RetryConfig {
        max_retries: STORE_RETRIES_MAX,
        retry_timeout: STORE_RETRY_TIMEOUT,
        ..RetryConfig::default()
    };
    let store: Arc<dyn ObjectStore> = match scheme {
        "s3" => {
            let builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
            let builder = configured(builder, options, "an S3", |b, k: AmazonS3ConfigKey, v| {
                b.with_config(k, v)
            });
            Arc::new(builder.map_err(refused)?.with_retry(retry).build()?)
        }
        "az" => {
            let builder = MicrosoftAzureBuilder::from_env().with_container_name(bucket);
            let builder = configured(builder, options, "an Azure", |b, k: AzureConfigKey, v| {
                b.with_config(k, v)
            });
            Arc::new(builder.map_err(refused)?.with_retry(retry).build()?)
        }
        "gs" => {
            let builder = GoogleCloudStorageBuilder::from_env().with_bucket_name(bucket);
            let kind = "a Google Cloud Storage";
            let builder = configured(builder, options, kind, |b, k: GoogleConfigKey, v| {
                b.with_config(k, v)
            });
            Arc::new(builder.map_err(refused)?.with_retry(retry).build()?)
        }
        _ => return Err(refused(SUPPORTED.into())),
    };
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        return Ok(store);
    }
    let prefix = ObjectPath::parse(prefix).map_err(|e| refused(e.to_string()))?;
    Ok(Arc::new(PrefixStore::new(store, prefix)))
}

/// `builder` with each of `options` set on it; an option that is not one of the store's keys
/// is refused, naming the store (`kind`).
fn configured<B, K: FromStr>(
    mut builder: B,
    options: &[(String, String)],
    kind: &str,
    set: impl Fn(B, K, &str) -> B,
) -> std::result::Result<B, String> {
    for (key, value) in options {
        let Ok(parsed) = key.to_ascii_lowercase().parse::<K>() else {
            return Err(format!("{key:?} is not {kind} store option"));
        };
        builder = set(builder, parsed, value);
    }
    Ok(builder)
}
