//! The settings of `weir serve`: flags, `WEIR_*` environment variables and a TOML file, merged
//! into one [`ServeConfig`]. A flag or variable wins over the file, the file over the default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::ArgMatches;
use clap::parser::ValueSource;

use crate::cluster::ClusterConfig;
use crate::kafka::KafkaAuth;
use crate::serve::ServeConfig;
use crate::tls::TlsFiles;

/// Why the settings could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("{0}")]
    Tls(&'static str),
    #[error("{0}")]
    Cluster(&'static str),
    #[error("--{flag} {given}: give {min} to {max}")]
    OutOfRange {
        flag: &'static str,
        given: u64,
        min: u64,
        max: u64,
    },
}

/// The flags of `weir serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (same names, `_` for `-`); flags and
    /// environment variables win over it.
    #[arg(long, env = "WEIR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where topics and metadata live.
    #[arg(long, env = "WEIR_DATA_DIR", default_value = "./weir-data")]
    data_dir: PathBuf,
    /// Address of the Kafka protocol listener (port 0: any free port).
    #[arg(long, env = "WEIR_KAFKA", default_value = "127.0.0.1:9092")]
    kafka: SocketAddr,
    /// Address of the HTTP listener (port 0: any free port).
    #[arg(long, env = "WEIR_HTTP", default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// Address of the Postgres wire listener for SQL (port 0: any free port; `off`: none).
    #[arg(long, env = "WEIR_PG", default_value = "127.0.0.1:5433")]
    pg: Listen,
    /// Host name clients are told to connect to; defaults to the listener's address.
    #[arg(long, env = "WEIR_ADVERTISED_HOST")]
    advertised_host: Option<String>,
    /// Create unknown topics when a client first uses them.
    #[arg(long, env = "WEIR_AUTO_CREATE_TOPICS", default_value_t = true, action = clap::ArgAction::Set)]
    auto_create_topics: bool,
    /// Partitions of a topic created without a count.
    #[arg(long, env = "WEIR_DEFAULT_PARTITIONS", default_value_t = 1)]
    default_partitions: u32,
    /// Topic Prometheus remote write and OTLP metrics go to when a request names none
    /// (`?topic=`); made on first use with a JSON value schema.
    #[arg(long, env = "WEIR_METRICS_TOPIC", default_value = "metrics")]
    metrics_topic: String,
    /// Topic OTLP logs go to when a request names none (`?topic=`); made on first use with a
    /// JSON value schema.
    #[arg(long, env = "WEIR_LOGS_TOPIC", default_value = "logs")]
    logs_topic: String,
    /// Authentication on the Kafka listener: `none` (anyone who reaches the port may do
    /// anything) or `sasl` (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 as a user of `weir user`).
    #[arg(long, env = "WEIR_KAFKA_AUTH", value_enum, default_value_t = KafkaAuth::None)]
    kafka_auth: KafkaAuth,
    /// SASL users (comma-separated) who may read and change other users' SCRAM credentials
    /// through Kafka's DescribeUserScramCredentials and AlterUserScramCredentials.
    #[arg(long, env = "WEIR_SUPER_USERS", value_delimiter = ',')]
    super_users: Vec<String>,
    /// PEM certificate chain (the node's own first) that turns on TLS for the Kafka, HTTP and
    /// Postgres listeners; needs --tls-key.
    #[arg(long, env = "WEIR_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "WEIR_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// PEM CA certificates: with it, every client must present a certificate one of them
    /// signed (Kafka `ssl.client.auth=required`).
    #[arg(long, env = "WEIR_TLS_CLIENT_CA")]
    tls_client_ca: Option<PathBuf>,
    /// Require `Authorization: Bearer <token>` on the HTTP `/v1` API, and the token as the
    /// password of Postgres connections.
    #[arg(long, env = "WEIR_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Require `Authorization: Bearer <token>` on `/metrics` with this token (for a Prometheus
    /// that should not hold the admin token); without it the admin token guards `/metrics`.
    #[arg(long, env = "WEIR_METRICS_TOKEN", hide_env_values = true)]
    metrics_token: Option<String>,
    /// CPU time one plugin call (one batch) may take, in milliseconds.
    #[arg(long, env = "WEIR_PLUGIN_TIMEOUT_MS", default_value_t = 100)]
    plugin_timeout_ms: u64,
    /// Memory one plugin instance may use, in MiB.
    #[arg(long, env = "WEIR_PLUGIN_MEMORY_MIB", default_value_t = 64)]
    plugin_memory_mib: u64,
    /// Memory all running SQL queries may hold at once, in MiB; a query that needs more fails.
    #[arg(long, env = "WEIR_SQL_MEMORY_MIB", default_value_t = 512)]
    sql_memory_mib: u64,
    /// Memory the columns SQL scans decode from active segments may hold between queries, in
    /// MiB; 0 keeps none.
    #[arg(long, env = "WEIR_SQL_CACHE_MIB", default_value_t = 128)]
    sql_cache_mib: u64,
    /// Partitions of all topics together; creations past it are refused.
    #[arg(long, env = "WEIR_PARTITIONS_MAX", default_value_t = weir_storage::PARTITIONS_MAX_DEFAULT)]
    partitions_max: u32,
    /// Free disk space, in MiB, below which produce and topic creation are refused (reads go
    /// on, and /healthz reports the node cannot write).
    #[arg(long, env = "WEIR_DISK_FREE_MIN_MIB", default_value_t = weir_storage::DISK_FREE_BYTES_MIN_DEFAULT >> 20)]
    disk_free_min_mib: u64,
    /// Closed segments whose files may be open at once; others are opened again when read.
    #[arg(long, env = "WEIR_OPEN_SEGMENTS_MAX", default_value_t = weir_storage::OPEN_SEGMENTS_MAX_DEFAULT)]
    open_segments_max: usize,
    /// Client connections the Kafka listener holds at once; more are closed on accept.
    #[arg(long, env = "WEIR_CONNECTIONS_MAX", default_value_t = CONNECTIONS_MAX_DEFAULT)]
    connections_max: u32,
    /// Client connections the HTTP listener holds at once; more are answered 503 and closed.
    #[arg(long, env = "WEIR_HTTP_CONNECTIONS_MAX", default_value_t = HTTP_CONNECTIONS_MAX_DEFAULT)]
    http_connections_max: u32,
    /// Delayed records (weir-deliver-at, weir-delay-ms, delivery.delay.ms) that may wait at
    /// once; produce past it is refused with a retriable error until some are delivered.
    #[arg(long, env = "WEIR_DELAYED_RECORDS_MAX", default_value_t = weir_storage::DELAYED_RECORDS_MAX_DEFAULT)]
    delayed_records_max: u64,
    /// Memory, in MiB, that Kafka request frames being read or handled may hold at once;
    /// connections wait for room before reading more.
    #[arg(long, env = "WEIR_REQUEST_MEMORY_MIB", default_value_t = REQUEST_MEMORY_BYTES_MAX_DEFAULT >> 20)]
    request_memory_mib: u64,
    /// How often retention (`retention.ms`, `retention.bytes`) and compaction run, in ms; in a
    /// cluster, how often the node tries for the lease under which one node applies retention.
    #[arg(long, env = "WEIR_RETENTION_CHECK_MS", default_value_t = weir_storage::MAINTENANCE_INTERVAL_MS_DEFAULT)]
    retention_check_ms: u64,
    /// Join a cluster whose metadata lives in this Postgres database (a `postgres://` URL);
    /// needs --object-store and --node-id. See docs/cluster.md.
    #[arg(long, env = "WEIR_CLUSTER_DB", hide_env_values = true)]
    cluster_db: Option<String>,
    /// The object store a cluster's data lives in, shared by every node: a directory
    /// (`file:///shared/dir`), an S3 bucket (`s3://bucket/prefix`), an Azure Blob container
    /// (`az://container/prefix`) or a Google Cloud Storage bucket (`gs://bucket/prefix`); needs
    /// --cluster-db.
    #[arg(long, env = "WEIR_OBJECT_STORE")]
    object_store: Option<String>,
    /// A setting of an S3, Azure or Google Cloud Storage object store, as KEY=VALUE
    /// (`aws_endpoint=http://minio:9000`, `aws_region=eu-west-1`, `azure_storage_account_name=…`,
    /// `google_service_account=/path/key.json`); repeat for more. They override the `AWS_*`,
    /// `AZURE_*` or `GOOGLE_*` environment variables, which are the place for credentials.
    #[arg(long = "object-store-option", value_name = "KEY=VALUE", value_parser = store_option)]
    object_store_options: Vec<(String, String)>,
    /// This node's Kafka broker id, unique in its cluster.
    #[arg(long, env = "WEIR_NODE_ID")]
    node_id: Option<i32>,
    /// In a cluster, longest a record set waits for others to share its object (ms).
    #[arg(long, env = "WEIR_CLUSTER_LINGER_MS", default_value_t = CLUSTER_LINGER_MS_DEFAULT)]
    cluster_linger_ms: u64,
    /// In a cluster, bytes of record sets that send their object before the linger ends.
    #[arg(long, env = "WEIR_CLUSTER_FLUSH_BYTES", default_value_t = CLUSTER_FLUSH_BYTES_DEFAULT)]
    cluster_flush_bytes: u64,
    /// In a cluster, memory the node's cache of object ranges may hold, in MiB.
    #[arg(long, env = "WEIR_CLUSTER_CACHE_MIB", default_value_t = weir_cluster::CACHE_MEMORY_BYTES_DEFAULT >> 20)]
    cluster_cache_mib: u64,
    /// In a cluster, disk the node's cache of object ranges may fill, in MiB, in
    /// `<data-dir>/cluster-cache`; kept across restarts. 0 turns the disk tier off.
    #[arg(long, env = "WEIR_CLUSTER_CACHE_DISK_MIB", default_value_t = CLUSTER_CACHE_DISK_MIB_DEFAULT)]
    cluster_cache_disk_mib: u64,
    /// In a cluster, connections the node keeps to the cluster database at most (1 to 64).
    #[arg(long, env = "WEIR_CLUSTER_DB_CONNECTIONS", default_value_t = weir_cluster::DB_CONNECTIONS_DEFAULT)]
    cluster_db_connections: usize,
}

/// Parses `--object-store-option KEY=VALUE`.
fn store_option(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_string(), value.to_string()))
        }
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

/// Default of `--cluster-cache-disk-mib`.
pub const CLUSTER_CACHE_DISK_MIB_DEFAULT: u64 = 1024;

/// Default of `--cluster-linger-ms` (`cluster.linger.ms`).
pub const CLUSTER_LINGER_MS_DEFAULT: u64 = 50;
/// Default of `--cluster-flush-bytes` (`cluster.flush.bytes`).
pub const CLUSTER_FLUSH_BYTES_DEFAULT: u64 = 4 << 20;

/// Default of `--connections-max`.
pub const CONNECTIONS_MAX_DEFAULT: u32 = 5_000;
/// Default of `--http-connections-max`.
pub const HTTP_CONNECTIONS_MAX_DEFAULT: u32 = 1_000;
/// Default of `--request-memory-mib`: two and a half of the largest frames.
pub const REQUEST_MEMORY_BYTES_MAX_DEFAULT: u64 = 256 << 20;

/// A listener's address, or `off` for none.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct Listen(Option<SocketAddr>);

impl std::str::FromStr for Listen {
    type Err = std::net::AddrParseError;

    fn from_str(text: &str) -> Result<Listen, Self::Err> {
        if text.eq_ignore_ascii_case("off") {
            return Ok(Listen(None));
        }
        text.parse().map(|addr| Listen(Some(addr)))
    }
}

impl TryFrom<String> for Listen {
    type Error = std::net::AddrParseError;

    fn try_from(text: String) -> Result<Listen, Self::Error> {
        text.parse()
    }
}

/// Settings of `weir serve` as a TOML file may give them.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    kafka: Option<SocketAddr>,
    http: Option<SocketAddr>,
    pg: Option<Listen>,
    advertised_host: Option<String>,
    auto_create_topics: Option<bool>,
    default_partitions: Option<u32>,
    metrics_topic: Option<String>,
    logs_topic: Option<String>,
    kafka_auth: Option<KafkaAuth>,
    super_users: Option<Vec<String>>,
    admin_token: Option<String>,
    metrics_token: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    plugin_timeout_ms: Option<u64>,
    plugin_memory_mib: Option<u64>,
    sql_memory_mib: Option<u64>,
    sql_cache_mib: Option<u64>,
    partitions_max: Option<u32>,
    disk_free_min_mib: Option<u64>,
    open_segments_max: Option<usize>,
    connections_max: Option<u32>,
    http_connections_max: Option<u32>,
    request_memory_mib: Option<u64>,
    retention_check_ms: Option<u64>,
    delayed_records_max: Option<u64>,
    cluster_db: Option<String>,
    object_store: Option<String>,
    object_store_options: Option<BTreeMap<String, String>>,
    node_id: Option<i32>,
    cluster_linger_ms: Option<u64>,
    cluster_flush_bytes: Option<u64>,
    cluster_cache_mib: Option<u64>,
    cluster_cache_disk_mib: Option<u64>,
    cluster_db_connections: Option<usize>,
}

impl ServeArgs {
    /// Merges the flags (as `matches` says they were given) with the config file they name.
    pub fn resolve(self, matches: &ArgMatches) -> Result<ServeConfig, ConfigError> {
        let file: FileConfig = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str(&text).map_err(|source| ConfigError::Parse {
                    path: path.clone(),
                    source,
                })?
            }
            None => FileConfig::default(),
        };
        let given = |id: &str| {
            matches!(
                matches.value_source(id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        };
        // A flag or variable given explicitly, else the file's value, else the flag's default.
        macro_rules! pick {
            ($field:ident) => {
                if given(stringify!($field)) {
                    self.$field
                } else {
                    file.$field.unwrap_or(self.$field)
                }
            };
            ($field:ident, optional) => {
                if given(stringify!($field)) {
                    self.$field
                } else {
                    file.$field.or(self.$field)
                }
            };
        }
        let tls = match (
            pick!(tls_cert, optional),
            pick!(tls_key, optional),
            pick!(tls_client_ca, optional),
        ) {
            (Some(cert), Some(key), client_ca) => Some(TlsFiles {
                cert,
                key,
                client_ca,
            }),
            (None, None, None) => None,
            (None, None, Some(_)) => {
                return Err(ConfigError::Tls(
                    "--tls-client-ca needs --tls-cert and --tls-key: clients are checked only on a TLS listener",
                ));
            }
            _ => {
                return Err(ConfigError::Tls(
                    "--tls-cert and --tls-key go together: give both, or neither",
                ));
            }
        };
        let data_dir = pick!(data_dir);
        let cluster = match (
            pick!(cluster_db, optional),
            pick!(object_store, optional),
            pick!(node_id, optional),
        ) {
            (None, None, _) => None,
            (Some(db_url), Some(object_store), Some(node_id)) if node_id >= 0 => {
                let db_connections = pick!(cluster_db_connections);
                if !(1..=weir_cluster::DB_CONNECTIONS_MAX).contains(&db_connections) {
                    return Err(ConfigError::OutOfRange {
                        flag: "cluster-db-connections",
                        given: db_connections as u64,
                        min: 1,
                        max: weir_cluster::DB_CONNECTIONS_MAX as u64,
                    });
                }
                let object_store_options = match file.object_store_options {
                    Some(options) if !given("object_store_options") => {
                        options.into_iter().collect()
                    }
                    _ => self.object_store_options,
                };
                Some(ClusterConfig {
                    db_url,
                    object_store,
                    object_store_options,
                    node_id,
                    linger_ms: pick!(cluster_linger_ms),
                    flush_bytes: pick!(cluster_flush_bytes),
                    cache_memory_bytes: pick!(cluster_cache_mib).saturating_mul(1 << 20),
                    cache_dir: data_dir.join("cluster-cache"),
                    cache_disk_bytes: pick!(cluster_cache_disk_mib).saturating_mul(1 << 20),
                    db_connections,
                    retention_check_ms: pick!(retention_check_ms),
                })
            }
            (Some(_), Some(_), Some(_)) => {
                return Err(ConfigError::Cluster("--node-id is a broker id: 0 or more"));
            }
            (Some(_), Some(_), None) => {
                return Err(ConfigError::Cluster(
                    "a cluster node needs --node-id, a broker id no other node uses",
                ));
            }
            _ => {
                return Err(ConfigError::Cluster(
                    "--cluster-db and --object-store go together: give both, or neither",
                ));
            }
        };
        Ok(ServeConfig {
            cluster,
            data_dir,
            kafka: pick!(kafka),
            http: pick!(http),
            pg: pick!(pg).0,
            advertised_host: pick!(advertised_host, optional),
            auto_create_topics: pick!(auto_create_topics),
            default_partitions: pick!(default_partitions),
            metrics_topic: pick!(metrics_topic),
            logs_topic: pick!(logs_topic),
            kafka_auth: pick!(kafka_auth),
            super_users: pick!(super_users),
            admin_token: pick!(admin_token, optional),
            metrics_token: pick!(metrics_token, optional),
            tls,
            plugin_timeout_ms: pick!(plugin_timeout_ms),
            plugin_memory_bytes_max: pick!(plugin_memory_mib).saturating_mul(1 << 20),
            sql_memory_bytes_max: pick!(sql_memory_mib).saturating_mul(1 << 20),
            sql_cache_bytes_max: pick!(sql_cache_mib).saturating_mul(1 << 20),
            partitions_max: pick!(partitions_max),
            disk_free_bytes_min: pick!(disk_free_min_mib).saturating_mul(1 << 20),
            open_segments_max: pick!(open_segments_max),
            connections_max: pick!(connections_max),
            http_connections_max: pick!(http_connections_max),
            delayed_records_max: pick!(delayed_records_max),
            request_memory_bytes_max: pick!(request_memory_mib).saturating_mul(1 << 20),
            retention_check_ms: pick!(retention_check_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

    use clap::{CommandFactory, FromArgMatches, Parser};

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn resolve(args: &[&str]) -> Result<ServeConfig, ConfigError> {
        let matches = Cli::command()
            .try_get_matches_from(std::iter::once("weir").chain(args.iter().copied()))
            .unwrap();
        Cli::from_arg_matches(&matches)
            .unwrap()
            .serve
            .resolve(&matches)
    }

    #[test]
    fn defaults_are_the_embedded_node() {
        let c = resolve(&[]).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("./weir-data"));
        assert_eq!(c.kafka.to_string(), "127.0.0.1:9092");
        assert_eq!(c.pg.unwrap().to_string(), "127.0.0.1:5433");
        assert_eq!(c.sql_memory_bytes_max, 512 << 20);
        assert_eq!(c.sql_cache_bytes_max, 128 << 20);
        assert_eq!(c.partitions_max, weir_storage::PARTITIONS_MAX_DEFAULT);
        assert_eq!(c.disk_free_bytes_min, 256 << 20);
        assert_eq!(c.request_memory_bytes_max, 256 << 20);
        assert!(c.admin_token.is_none());
        assert_eq!(c.kafka_auth, KafkaAuth::None);
    }

    #[test]
    fn the_file_fills_what_flags_leave_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weir.toml");
        std::fs::write(
            &path,
            "data_dir = '/srv/weir'\npg = 'off'\npartitions_max = 50\n\
             admin_token = 'from-file'\nkafka = '0.0.0.0:19092'\nkafka_auth = 'sasl'\n",
        )
        .unwrap();
        let path = path.to_str().unwrap();
        let c = resolve(&["--config", path, "--kafka", "127.0.0.1:29092"]).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/srv/weir"));
        assert!(c.pg.is_none());
        assert_eq!(c.partitions_max, 50);
        assert_eq!(c.admin_token.as_deref(), Some("from-file"));
        assert_eq!(c.kafka.to_string(), "127.0.0.1:29092");
        assert_eq!(c.kafka_auth, KafkaAuth::Sasl);
    }

    #[test]
    fn a_cluster_needs_its_database_its_store_and_a_node_id() {
        assert!(resolve(&[]).unwrap().cluster.is_none());
        let db = "postgres://weir@db/weir";
        let c = resolve(&[
            "--cluster-db",
            db,
            "--object-store",
            "file:///shared",
            "--node-id",
            "3",
        ])
        .unwrap()
        .cluster
        .unwrap();
        assert_eq!((c.db_url.as_str(), c.node_id), (db, 3));
        assert_eq!(c.object_store, "file:///shared");
        assert_eq!(c.linger_ms, CLUSTER_LINGER_MS_DEFAULT);
        assert_eq!(c.flush_bytes, CLUSTER_FLUSH_BYTES_DEFAULT);
        assert_eq!(c.db_connections, weir_cluster::DB_CONNECTIONS_DEFAULT);
        for (args, says) in [
            (&["--cluster-db", db][..], "go together"),
            (&["--object-store", "file:///shared"], "go together"),
            (
                &["--cluster-db", db, "--object-store", "file:///s"],
                "--node-id",
            ),
            (
                &[
                    "--cluster-db",
                    db,
                    "--object-store",
                    "file:///s",
                    "--node-id=-1",
                ],
                "0 or more",
            ),
            (
                &[
                    "--cluster-db",
                    db,
                    "--object-store",
                    "file:///s",
                    "--node-id=1",
                    "--cluster-db-connections=65",
                ],
                "--cluster-db-connections 65: give 1 to 64",
            ),
        ] {
            let err = resolve(args).unwrap_err();
            assert!(err.to_string().contains(says), "{args:?}: {err}");
        }
        // The file's keys are the flags' names.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weir.toml");
        std::fs::write(
            &path,
            format!(
                "cluster_db = '{db}'\nobject_store = 's3://b/p'\nnode_id = 7\n\
                 cluster_linger_ms = 20\n\
                 [object_store_options]\naws_region = 'eu-west-1'\naws_allow_http = 'true'\n"
            ),
        )
        .unwrap();
        let path = path.to_str().unwrap();
        let c = resolve(&["--config", path]).unwrap().cluster.unwrap();
        assert_eq!((c.node_id, c.linger_ms), (7, 20));
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(
            c.object_store_options,
            [
                pair("aws_allow_http", "true"),
                pair("aws_region", "eu-west-1")
            ]
        );
        // Options given as flags replace the file's.
        let c = resolve(&[
            "--config",
            path,
            "--object-store-option",
            "aws_endpoint=http://127.0.0.1:9000/a=b",
        ])
        .unwrap()
        .cluster
        .unwrap();
        assert_eq!(
            c.object_store_options,
            [pair("aws_endpoint", "http://127.0.0.1:9000/a=b")]
        );
        let err = Cli::command()
            .try_get_matches_from(["weir", "--object-store-option", "=x"])
            .unwrap_err();
        assert!(err.to_string().contains("KEY=VALUE"), "{err}");
    }

    #[test]
    fn tls_needs_a_certificate_and_its_key() {
        assert!(resolve(&[]).unwrap().tls.is_none());
        let c = resolve(&["--tls-cert", "c.pem", "--tls-key", "k.pem"]).unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(tls.cert, PathBuf::from("c.pem"));
        assert_eq!(tls.key, PathBuf::from("k.pem"));
        assert!(tls.client_ca.is_none());
        for args in [
            &["--tls-cert", "c.pem"][..],
            &["--tls-key", "k.pem"],
            &["--tls-client-ca", "ca.pem"],
        ] {
            let err = resolve(args).unwrap_err();
            assert!(err.to_string().contains("--tls-"), "{args:?}: {err}");
        }
    }

    #[test]
    fn unknown_keys_and_missing_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weir.toml");
        std::fs::write(&path, "data_dri = '/typo'\n").unwrap();
        let err = resolve(&["--config", path.to_str().unwrap()]).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
        assert!(err.to_string().contains("data_dri"), "{err}");
        let missing = dir.path().join("none.toml");
        let err = resolve(&["--config", missing.to_str().unwrap()]).unwrap_err();
        assert!(err.to_string().contains("none.toml"), "{err}");
    }
}
