//! The `weir` binary: parses flags and wires the crates together.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use weir_broker::acl::{
    Acl, AclFilter, Operation, PatternFilter, PatternType, Permission, ResourceType,
};
use weir_broker::cli::{self, Client, ConsumeOptions};
use weir_broker::config::ServeArgs;
use weir_broker::plugin_cli;
use weir_broker::serve::{ServeConfig, Server};

#[derive(Parser)]
#[command(
    name = "weir",
    version,
    about = "A Kafka-compatible stream broker with WASM plugins and SQL"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How CLI commands reach a running node.
#[derive(clap::Args)]
struct Remote {
    /// HTTP address of the node.
    #[arg(
        long,
        global = true,
        env = "WEIR_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    server: String,
    /// Admin token, when the node was started with one.
    #[arg(long, global = true, env = "WEIR_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM file of the CA that signed the node's certificate, for an `https://` server whose
    /// certificate no public CA signed.
    #[arg(long, global = true, env = "WEIR_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// PEM certificate to present to a node started with --tls-client-ca; needs --client-key.
    #[arg(long, global = true, env = "WEIR_CLIENT_CERT", requires = "client_key")]
    client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(long, global = true, env = "WEIR_CLIENT_KEY", requires = "client_cert")]
    client_key: Option<PathBuf>,
}

impl Remote {
    fn client(&self) -> weir_broker::error::Result<Client> {
        if self.ca_cert.is_none() && self.client_cert.is_none() {
            return Ok(Client::new(&self.server, self.token.clone()));
        }
        let identity = self.client_cert.as_deref().zip(self.client_key.as_deref());
        Client::with_tls_files(
            &self.server,
            self.token.clone(),
            self.ca_cert.as_deref(),
            identity,
        )
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run a node on a data directory until SIGINT or SIGTERM.
    Serve(Box<ServeArgs>),
    /// Create, list, describe and delete topics.
    Topic {
        #[command(subcommand)]
        command: TopicCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// Send lines of a file (or standard input) as records.
    Produce {
        topic: String,
        /// Key of every record.
        #[arg(short, long)]
        key: Option<String>,
        /// Each line is `KEY<SEPARATOR>VALUE`, split at the first SEPARATOR; a line without it
        /// is a value (with --key's key).
        #[arg(long, value_name = "SEPARATOR", conflicts_with = "json")]
        key_separator: Option<String>,
        /// A header of every record, as name=value (repeatable).
        #[arg(short = 'H', long = "header", value_name = "NAME=VALUE")]
        headers: Vec<String>,
        /// Each line is a JSON object: {"key": …, "value": …, "headers": {…}, "partition": …,
        /// "timestamp": …}; what `weir consume --json` prints is taken back.
        #[arg(long)]
        json: bool,
        /// File to read; standard input when absent.
        #[arg(short, long, conflicts_with = "follow")]
        file: Option<PathBuf>,
        /// Send the lines appended to this file, forever, across log rotation (like `tail -F`).
        #[arg(long, value_name = "FILE")]
        follow: Option<PathBuf>,
        /// With --follow, send the lines already in the file first, not only new ones.
        #[arg(long, requires = "follow")]
        from_beginning: bool,
        /// Partition for every record; by key (or round-robin) when absent.
        #[arg(short, long)]
        partition: Option<u32>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Print records of a topic, one per line: values, a format of your own, or JSON.
    Consume {
        topic: String,
        /// Start at the oldest record instead of the end.
        #[arg(long, conflicts_with_all = ["offset", "from_time"])]
        from_beginning: bool,
        /// Start at this offset in each partition read; negative counts back from the end
        /// (-10: the last ten records).
        #[arg(
            short,
            long,
            allow_negative_numbers = true,
            conflicts_with = "from_time"
        )]
        offset: Option<i64>,
        /// Start at the first record at or after this time: RFC 3339 or epoch milliseconds.
        #[arg(long, value_name = "TIME")]
        from_time: Option<String>,
        /// Read only this partition.
        #[arg(short, long)]
        partition: Option<u32>,
        /// Print each record as this format: %t topic, %p partition, %o offset, %k key,
        /// %v value, %T timestamp (ms), %h headers, %% a percent sign, \n and \t.
        #[arg(long, conflicts_with = "json")]
        format: Option<String>,
        /// Print each record as a JSON object, one a line.
        #[arg(long)]
        json: bool,
        /// Resume from and commit to this group's offsets.
        #[arg(long)]
        group: Option<String>,
        /// Stop at the end of the topic instead of waiting for more.
        #[arg(long)]
        exit: bool,
        /// Stop after this many records.
        #[arg(long)]
        max: Option<u64>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Add, list and delete the users SASL authenticates on the Kafka listener.
    User {
        #[command(subcommand)]
        command: UserCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// Add, list and delete the ACLs SASL users are checked against.
    Acl {
        #[command(subcommand)]
        command: AclCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// The nodes of the node's cluster.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// List, describe and delete consumer groups, and move their offsets.
    Groups {
        /// What to do; `list` when absent.
        #[command(subcommand)]
        command: Option<GroupsCommand>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Run SQL over topics; without a statement, a shell that reads statements ending in `;`.
    Sql {
        statement: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Write, build, deploy and manage WebAssembly plugins.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// Run a topic through plugins into other topics.
    Pipeline {
        #[command(subcommand)]
        command: PipelineCommand,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// List the live nodes of the cluster, as Metadata gives them to clients.
    Status {
        /// Print the cluster as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum GroupsCommand {
    /// List consumer groups with their state, members and lag.
    List,
    /// Show a group's members and committed offsets with their lag.
    Describe {
        group: String,
        /// Print the group as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a group without active members, and its committed offsets.
    Delete { group: String },
    /// Move the committed offsets of a group without active members on a topic.
    ResetOffsets {
        group: String,
        /// The topic whose offsets move.
        #[arg(long)]
        topic: String,
        /// A partition to move (repeatable); every partition of the topic when absent.
        #[arg(long = "partition")]
        partitions: Vec<u32>,
        #[command(flatten)]
        to: ResetTo,
        /// Show the offsets before and after, and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Where `weir groups reset-offsets` moves the offsets; exactly one.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct ResetTo {
    /// To each partition's oldest record.
    #[arg(long)]
    to_earliest: bool,
    /// To each partition's end: skip everything not yet read.
    #[arg(long)]
    to_latest: bool,
    /// To the first record at or after this time: RFC 3339 or epoch milliseconds.
    #[arg(long, value_name = "TIME")]
    to_datetime: Option<String>,
    /// To this offset (kept within each partition's start and end).
    #[arg(long, value_name = "OFFSET")]
    to_offset: Option<i64>,
    /// Forwards (or with a negative number, backwards) by this many records.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    shift_by: Option<i64>,
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Write a new plugin crate.
    New {
        name: String,
        /// filter, map, filter_map, flat_map, partitioner or aggregate.
        #[arg(long, default_value = "filter")]
        kind: String,
        /// Directory to create the crate in.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Path of the weir-guest SDK crate; by default the SDK built into this binary, written
        /// once under $XDG_CACHE_HOME/weir/sdk (~/.cache/weir/sdk).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Build the plugin crate in a directory to wasm and print the module's path.
    Build {
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Upload a module as a new version of a plugin.
    Deploy {
        name: String,
        file: PathBuf,
        /// Plugin parameter as key=value (repeatable).
        #[arg(long = "param")]
        params: Vec<String>,
    },
    /// List plugins with their active version, kind and size.
    List,
    /// Show a plugin's versions, hashes and params.
    Describe { name: String },
    /// Make an earlier version active again.
    Rollback {
        name: String,
        /// Version to return to; the one before the active one by default.
        #[arg(long)]
        to: Option<u32>,
    },
    /// Delete a plugin that no pipeline runs.
    Delete { name: String },
}

/// The resource an ACL command is about.
#[derive(clap::Args)]
#[group(multiple = false)]
struct AclResource {
    /// A topic; `*` is every topic.
    #[arg(long)]
    topic: Option<String>,
    /// A consumer group; `*` is every group.
    #[arg(long)]
    group: Option<String>,
    /// The cluster (creating topics, managing ACLs and users, the broker's configs).
    #[arg(long)]
    cluster: bool,
}

impl AclResource {
    fn resource(&self) -> Option<(ResourceType, String)> {
        match (&self.topic, &self.group, self.cluster) {
            (Some(topic), _, _) => Some((ResourceType::Topic, topic.clone())),
            (_, Some(group), _) => Some((ResourceType::Group, group.clone())),
            (_, _, true) => Some((ResourceType::Cluster, weir_broker::acl::CLUSTER_NAME.into())),
            _ => None,
        }
    }
}

#[derive(Subcommand)]
enum AclCommand {
    /// Allow (or with --deny, deny) operations on a resource to a principal.
    Add {
        /// `User:<name>` (a bare name means a user), or `User:*` for every user.
        #[arg(long)]
        principal: String,
        /// read, write, create, delete, alter, describe, describe_configs, alter_configs,
        /// idempotent_write or all; repeat for several.
        #[arg(long = "operation", required = true)]
        operations: Vec<Operation>,
        #[command(flatten)]
        resource: AclResource,
        /// Match every resource whose name starts with the given name.
        #[arg(long)]
        prefixed: bool,
        /// Deny instead of allow; a deny wins over any allow.
        #[arg(long)]
        deny: bool,
        /// Limit the rule to clients from this IP address.
        #[arg(long, default_value = "*")]
        host: String,
    },
    /// List the rules, all or those the flags match.
    List {
        #[command(flatten)]
        filter: AclFilterArgs,
    },
    /// Delete the rules the flags match.
    Delete {
        #[command(flatten)]
        filter: AclFilterArgs,
    },
}

#[derive(clap::Args)]
struct AclFilterArgs {
    /// Rules of this principal (a bare name means a user).
    #[arg(long)]
    principal: Option<String>,
    /// Rules of this operation.
    #[arg(long)]
    operation: Option<Operation>,
    #[command(flatten)]
    resource: AclResource,
    /// With a resource: rules that apply to it (literal, `*` and prefixes), not only rules
    /// named exactly so.
    #[arg(long)]
    matching: bool,
}

impl AclFilterArgs {
    fn filter(&self) -> AclFilter {
        let resource = self.resource.resource();
        AclFilter {
            resource_type: resource.as_ref().map(|(t, _)| *t),
            resource_name: resource.map(|(_, name)| name),
            pattern_type: self.matching.then_some(PatternFilter::Match),
            principal: self.principal.as_deref().map(cli::principal),
            operation: self.operation,
            ..AclFilter::default()
        }
    }
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user, or give one a new password.
    Add {
        name: String,
        /// The password; read from stdin when not given.
        #[arg(long)]
        password: Option<String>,
    },
    /// List the users and their SCRAM mechanisms.
    List,
    /// Delete a user.
    Delete { name: String },
}

#[derive(Subcommand)]
enum PipelineCommand {
    /// Create a pipeline from a topic through plugins into topics, and start it.
    Create {
        name: String,
        /// Input topic.
        #[arg(long)]
        from: String,
        /// Plugins to run, in order (comma-separated).
        #[arg(long, value_delimiter = ',')]
        through: Vec<String>,
        /// Partitioner plugin choosing the output partition.
        #[arg(long)]
        partition_by: Option<String>,
        /// Output topics (comma-separated); records go to the first unless a plugin routes them.
        #[arg(long, value_delimiter = ',', required = true)]
        to: Vec<String>,
        /// earliest, latest, an offset, or @<timestamp ms>.
        #[arg(long, default_value = "latest")]
        from_offset: String,
        /// Topic for records a plugin failed on; <name>.dlq by default.
        #[arg(long)]
        dead_letter: Option<String>,
        /// How far an aggregate's watermark stays behind the input's event time (ms).
        #[arg(long, default_value_t = 0)]
        lateness_ms: i64,
        /// How long an input partition may be silent before it stops holding an aggregate's
        /// windows open (ms).
        #[arg(long, default_value_t = weir_runtime::PipelineSpec::IDLE_TIMEOUT_DEFAULT_MS)]
        idle_timeout_ms: i64,
    },
    /// List pipelines with status, lag, records in and out, and the last error.
    List,
    /// Show one pipeline's spec, status and counters.
    Describe { name: String },
    /// Stop a pipeline where it is; resume goes on from there.
    Pause { name: String },
    /// Go on with a paused pipeline from its checkpoint.
    Resume { name: String },
    /// Stop and delete a pipeline; its topics stay.
    Delete { name: String },
}

#[derive(Subcommand)]
enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        #[arg(short, long, default_value_t = 1)]
        partitions: u32,
        /// Topic config as key=value (repeatable), e.g. retention.ms=3600000.
        #[arg(short, long = "config")]
        configs: Vec<String>,
        /// How SQL reads values: `json` adds the columns of --schema.
        #[arg(long)]
        value_format: Option<String>,
        /// Typed columns parsed from JSON values, e.g. 'host TEXT, status INT, bytes BIGINT'.
        #[arg(long)]
        schema: Option<String>,
    },
    /// List topics with their partition counts.
    List,
    /// Set topic configs, or return them to their defaults.
    Alter {
        name: String,
        /// A config to set, as key=value (repeatable), e.g. retention.ms=3600000.
        #[arg(short, long = "config")]
        configs: Vec<String>,
        /// A config to return to its default (repeatable).
        #[arg(long = "delete-config")]
        delete_configs: Vec<String>,
    },
    /// Show a topic's partitions, offsets, sizes and configs.
    Describe {
        name: String,
        /// Print the topic as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a topic and its records.
    Delete { name: String },
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Lets a client command whose reader went away (`weir topic list | head -1`) end quietly, as
/// other command-line tools do, rather than panic on a write to a closed pipe. The server keeps
/// Rust's default (the signal ignored): a client that hangs up must not stop the node.
fn end_quietly_on_closed_pipe() {
    // SAFETY: `signal` with `SIG_DFL` only restores the default disposition of SIGPIPE; it runs
    // before any other thread exists, and no handler of ours is replaced.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn run() -> anyhow::Result<()> {
    init_logging();
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches)?;
    if !matches!(cli.command, Command::Serve(_)) {
        end_quietly_on_closed_pipe();
    }
    match cli.command {
        Command::Serve(args) => {
            let serve_matches = matches
                .subcommand_matches("serve")
                .context("serve arguments")?;
            serve(args.resolve(serve_matches)?)
        }
        Command::Topic { command, remote } => Ok(topic_command(command, &remote.client()?)?),
        Command::Produce {
            topic,
            key,
            key_separator,
            headers,
            json,
            file,
            follow,
            from_beginning,
            partition,
            remote,
        } => {
            let headers = cli::parse_pairs("header", &headers)?;
            let target = cli::Target {
                topic: &topic,
                key: key.as_deref(),
                partition,
                key_separator: key_separator.as_deref(),
                headers: &headers,
                json,
            };
            match follow {
                Some(path) => Ok(weir_broker::follow::follow(
                    &remote.client()?,
                    &target,
                    &path,
                    from_beginning,
                )?),
                None => produce_command(&remote.client()?, &target, file),
            }
        }
        Command::Consume {
            topic,
            from_beginning,
            offset,
            from_time,
            partition,
            format,
            json,
            group,
            exit,
            max,
            remote,
        } => {
            let start = match (offset, from_time) {
                (Some(offset), _) => cli::Start::Offset(offset),
                (None, Some(time)) => cli::Start::Time(time),
                (None, None) if from_beginning => cli::Start::Beginning,
                (None, None) => cli::Start::End,
            };
            let output = match format {
                Some(format) => cli::Output::format(&format)?,
                None if json => cli::Output::Json,
                None => cli::Output::Value,
            };
            let options = ConsumeOptions {
                start,
                partition,
                group: group.as_deref(),
                exit_at_end: exit,
                max_records: max,
                output,
            };
            let mut out = std::io::stdout().lock();
            cli::consume(&remote.client()?, &topic, &options, &mut out)?;
            Ok(())
        }
        Command::User { command, remote } => Ok(user_command(command, &remote.client()?)?),
        Command::Acl { command, remote } => Ok(acl_command(command, &remote.client()?)?),
        Command::Groups { command, remote } => Ok(groups_command(command, &remote.client()?)?),
        Command::Cluster {
            command: ClusterCommand::Status { json },
            remote,
        } => Ok(cli::cluster_status(&remote.client()?, json)?),
        Command::Sql { statement, remote } => Ok(sql_command(statement, &remote.client()?)?),
        Command::Plugin { command, remote } => Ok(plugin_command(command, &remote.client()?)?),
        Command::Pipeline { command, remote } => Ok(pipeline_command(command, &remote.client()?)?),
    }
}

fn groups_command(command: Option<GroupsCommand>, c: &Client) -> weir_broker::error::Result<()> {
    match command.unwrap_or(GroupsCommand::List) {
        GroupsCommand::List => cli::groups(c),
        GroupsCommand::Describe { group, json } => cli::group_describe(c, &group, json),
        GroupsCommand::Delete { group } => cli::group_delete(c, &group),
        GroupsCommand::ResetOffsets {
            group,
            topic,
            partitions,
            to,
            dry_run,
        } => {
            let reset = cli::Reset {
                topic,
                partitions,
                to_earliest: to.to_earliest,
                to_latest: to.to_latest,
                to_datetime: to.to_datetime,
                to_offset: to.to_offset,
                shift_by: to.shift_by,
                dry_run,
            };
            cli::group_reset(c, &group, &reset)
        }
    }
}

fn acl_command(command: AclCommand, c: &Client) -> weir_broker::error::Result<()> {
    match command {
        AclCommand::Add {
            principal,
            operations,
            resource,
            prefixed,
            deny,
            host,
        } => {
            let Some((resource_type, resource_name)) = resource.resource() else {
                return Err(weir_broker::error::Error::Invalid(
                    "name the resource: --topic NAME, --group NAME or --cluster".into(),
                ));
            };
            let acls: Vec<Acl> = operations
                .into_iter()
                .map(|operation| Acl {
                    resource_type,
                    resource_name: resource_name.clone(),
                    pattern_type: if prefixed {
                        PatternType::Prefixed
                    } else {
                        PatternType::Literal
                    },
                    principal: cli::principal(&principal),
                    host: host.clone(),
                    operation,
                    permission: if deny {
                        Permission::Deny
                    } else {
                        Permission::Allow
                    },
                })
                .collect();
            cli::acl_add(c, &acls)
        }
        AclCommand::List { filter } => cli::acl_list(c, &filter.filter()),
        AclCommand::Delete { filter } => cli::acl_delete(c, &filter.filter()),
    }
}

fn user_command(command: UserCommand, c: &Client) -> weir_broker::error::Result<()> {
    match command {
        UserCommand::Add { name, password } => {
            let password = match password {
                Some(password) => password,
                None => {
                    let mut line = String::new();
                    std::io::stdin()
                        .read_line(&mut line)
                        .map_err(weir_broker::error::io("reading the password from stdin"))?;
                    line.trim_end_matches(['\r', '\n']).to_string()
                }
            };
            cli::user_set(c, &name, &password)
        }
        UserCommand::List => cli::user_list(c),
        UserCommand::Delete { name } => cli::user_delete(c, &name),
    }
}

/// Logs to stderr at the level `WEIR_LOG` asks (default `info`), in colour on a terminal.
fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn topic_command(command: TopicCommand, c: &Client) -> weir_broker::error::Result<()> {
    match command {
        TopicCommand::Create {
            name,
            partitions,
            mut configs,
            value_format,
            schema,
        } => {
            configs.extend(value_format.map(|f| format!("value.format={f}")));
            configs.extend(schema.map(|s| format!("value.schema={s}")));
            cli::topic_create(c, &name, partitions, &configs)
        }
        TopicCommand::List => cli::topic_list(c),
        TopicCommand::Alter {
            name,
            configs,
            delete_configs,
        } => cli::topic_alter(c, &name, &configs, &delete_configs),
        TopicCommand::Describe { name, json } => cli::topic_describe(c, &name, json),
        TopicCommand::Delete { name } => cli::topic_delete(c, &name),
    }
}

/// Produces the lines of `file`, with a progress bar, or of stdin.
fn produce_command(
    c: &Client,
    target: &cli::Target,
    file: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let sent = match file {
        Some(path) => {
            let f = std::fs::File::open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let bar = indicatif::ProgressBar::new(len);
            cli::produce(c, target, &mut std::io::BufReader::new(f), Some(bar))?
        }
        None => cli::produce(c, target, &mut std::io::stdin().lock(), None)?,
    };
    eprintln!("produced {sent} records to {}", target.topic);
    Ok(())
}

/// One statement, or a shell reading statements from the terminal or a pipe.
fn sql_command(statement: Option<String>, c: &Client) -> weir_broker::error::Result<()> {
    match statement {
        Some(statement) => cli::sql(c, &statement),
        None if std::io::stdin().is_terminal() => cli::sql_shell(c, &mut cli::Terminal::open()?),
        None => cli::sql_shell(c, &mut cli::Piped(std::io::stdin().lock())),
    }
}

fn plugin_command(command: PluginCommand, c: &Client) -> weir_broker::error::Result<()> {
    match command {
        PluginCommand::New {
            name,
            kind,
            dir,
            sdk,
        } => {
            let root = plugin_cli::new(&name, &kind, &dir, sdk.as_deref())?;
            println!("created {kind} plugin {name} in {}", root.display());
            println!(
                "next: cd {} && cargo test && weir plugin build",
                root.display()
            );
            Ok(())
        }
        PluginCommand::Build { dir } => {
            println!("{}", plugin_cli::build(&dir)?.display());
            Ok(())
        }
        PluginCommand::Deploy { name, file, params } => {
            plugin_cli::deploy(c, &name, &file, &params)
        }
        PluginCommand::List => plugin_cli::list(c),
        PluginCommand::Describe { name } => plugin_cli::show(c, &format!("/v1/plugins/{name}")),
        PluginCommand::Rollback { name, to } => plugin_cli::rollback(c, &name, to),
        PluginCommand::Delete { name } => {
            plugin_cli::delete(c, &format!("/v1/plugins/{name}"), &format!("plugin {name}"))
        }
    }
}

fn pipeline_command(command: PipelineCommand, c: &Client) -> weir_broker::error::Result<()> {
    match command {
        PipelineCommand::Create {
            name,
            from,
            through,
            partition_by,
            to,
            from_offset,
            dead_letter,
            lateness_ms,
            idle_timeout_ms,
        } => plugin_cli::pipeline_create(
            c,
            &plugin_cli::PipelineArgs {
                name: &name,
                from: &from,
                through: &through,
                partition_by: partition_by.as_deref(),
                to: &to,
                from_offset: &from_offset,
                dead_letter: dead_letter.as_deref(),
                lateness_ms,
                idle_timeout_ms,
            },
        ),
        PipelineCommand::List => plugin_cli::pipeline_list(c),
        PipelineCommand::Describe { name } => plugin_cli::show(c, &format!("/v1/pipelines/{name}")),
        PipelineCommand::Pause { name } => plugin_cli::pipeline_action(c, &name, "pause"),
        PipelineCommand::Resume { name } => plugin_cli::pipeline_action(c, &name, "resume"),
        PipelineCommand::Delete { name } => plugin_cli::delete(
            c,
            &format!("/v1/pipelines/{name}"),
            &format!("pipeline {name}"),
        ),
    }
}

fn serve(config: ServeConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        // Installed before the listeners open, so a signal sent once they are ready is
        // never lost to the default action.
        let signal = shutdown_signal()?;
        let server = Server::start(&config).await?;
        signal.await;
        tracing::info!("shutting down");
        Ok(server.shutdown().await?)
    })
}

/// Catches SIGTERM and SIGINT from now on; the future ends at the first of them.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--help` gives every command and subcommand a line saying what it does.
    #[test]
    fn every_command_says_what_it_does() {
        fn check(command: &clap::Command, path: &str) {
            for sub in command.get_subcommands() {
                let path = format!("{path} {}", sub.get_name());
                assert!(sub.get_about().is_some(), "`{path}` has no description");
                check(sub, &path);
            }
        }
        check(&Cli::command(), "weir");
    }
}
