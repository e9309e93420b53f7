//! Access control lists: which SASL user may do what to which topic, group or the cluster, in
//! Kafka's model and with Kafka's codes, so Kafka's admin tools manage them as they do on a
//! Kafka cluster.
//!
//! A rule allows or denies one operation (or `ALL`) on a resource named literally (`*` is every
//! resource of its type) or by prefix, to a principal (`User:alice`, or `User:*`) from a host
//! (`*` or one IP address). An operation is allowed when some rule allows it and none denies it;
//! with no rule, it is denied. `READ`, `WRITE`, `DELETE` and `ALTER` imply `DESCRIBE`, and
//! `ALTER_CONFIGS` implies `DESCRIBE_CONFIGS`, as in Kafka. `--super-users` pass every check.
//! Rules live in the metadata store; checks read an in-memory copy, so they cost no disk read.

use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use weir_runtime::{Owner, PipelineSpec, Rights};
use weir_sql::{TableAccess, TableUse};
use weir_storage::{Bounded, Present, Tree, locks};

/// Most ACL rules a node keeps; each check may read all of them.
pub const ACLS_MAX: usize = 10_000;
/// Longest resource name or principal of a rule, in bytes.
pub const ACL_NAME_BYTES_MAX: usize = 512;
/// The one name of the cluster resource, as in Kafka.
pub const CLUSTER_NAME: &str = "kafka-cluster";
pub const ACLS_TREE: &str = "acls";

#[derive(Debug, thiserror::Error)]
pub enum AclError {
    #[error("{0}")]
    Invalid(String),
    #[error(
        "{existing} ACL rules exist and {added} more were given: a node keeps at most {ACLS_MAX}"
    )]
    TooMany { existing: usize, added: usize },
    #[error(transparent)]
    Storage(#[from] weir_storage::StorageError),
}

/// Defines an enum of Kafka's with its wire codes and the names `weir acl` and the HTTP API use.
macro_rules! kafka_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident = $code:literal, $text:literal;)+ }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($variant,)+
        }

        impl $name {
            pub const ALL_VALUES: &'static [$name] = &[$($name::$variant,)+];

            /// Kafka's wire code.
            pub fn code(self) -> i8 {
                match self {
                    $($name::$variant => $code,)+
                }
            }

            pub fn from_code(code: i8) -> Option<$name> {
                match code {
                    $($code => Some($name::$variant),)+
                    _ => None,
                }
            }

            /// Kafka's name, as `kafka-acls.sh` prints it.
            pub fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = AclError;

            fn from_str(text: &str) -> Result<$name, AclError> {
                let wanted = text.replace('-', "_");
                $name::ALL_VALUES
                    .iter()
                    .copied()
                    .find(|v| v.name().eq_ignore_ascii_case(&wanted))
                    .ok_or_else(|| {
                        let names: Vec<&str> = $name::ALL_VALUES.iter().map(|v| v.name()).collect();
                        AclError::Invalid(format!(
                            "{text:?} is not one of {}",
                            names.join(", ")
                        ))
                    })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

kafka_enum!(
    /// What a rule is about.
    ResourceType {
        Topic = 2, "TOPIC";
        Group = 3, "GROUP";
        Cluster = 4, "CLUSTER";
    }
);

kafka_enum!(
    /// How a rule's resource name matches.
    PatternType {
        Literal = 3, "LITERAL";
        Prefixed = 4, "PREFIXED";
    }
);

kafka_enum!(
    /// What a rule allows or denies.
    Operation {
        All = 2, "ALL";
        Read = 3, "READ";
        Write = 4, "WRITE";
        Create = 5, "CREATE";
        Delete = 6, "DELETE";
        Alter = 7, "ALTER";
        Describe = 8, "DESCRIBE";
        DescribeConfigs = 10, "DESCRIBE_CONFIGS";
        AlterConfigs = 11, "ALTER_CONFIGS";
        IdempotentWrite = 12, "IDEMPOTENT_WRITE";
    }
);

kafka_enum!(
    /// Whether a rule allows or denies.
    Permission {
        Deny = 2, "DENY";
        Allow = 3, "ALLOW";
    }
);

impl Operation {
    /// Whether allowing `self` allows `wanted` too.
    fn allows(self, wanted: Operation) -> bool {
        self == Operation::All
            || self == wanted
            || (wanted == Operation::Describe
                && matches!(
                    self,
                    Operation::Read | Operation::Write | Operation::Delete | Operation::Alter
                ))
            || (wanted == Operation::DescribeConfigs && self == Operation::AlterConfigs)
    }

    /// Whether denying `self` denies `wanted`.
    fn denies(self, wanted: Operation) -> bool {
        self == Operation::All || self == wanted
    }
}

/// One rule. Given as JSON, the pattern type defaults to literal, the host to `*` and the
/// permission to allow.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Acl {
    pub resource_type: ResourceType,
    pub resource_name: String,
    #[serde(default = "literal")]
    pub pattern_type: PatternType,
    /// `User:<name>`, or `User:*` for every user.
    pub principal: String,
    /// `*`, or the IP address the rule is limited to.
    #[serde(default = "any_host")]
    pub host: String,
    pub operation: Operation,
    #[serde(default = "allow")]
    pub permission: Permission,
}

fn literal() -> PatternType {
    PatternType::Literal
}

fn any_host() -> String {
    "*".into()
}

fn allow() -> Permission {
    Permission::Allow
}

impl Acl {
    /// Refuses a rule that could never match, or that Kafka would not accept.
    pub fn validate(&self) -> Result<(), AclError> {
        let invalid = |m: String| Err(AclError::Invalid(m));
        if self.resource_name.is_empty() || self.resource_name.len() > ACL_NAME_BYTES_MAX {
            return invalid(format!(
                "a resource name has 1 to {ACL_NAME_BYTES_MAX} bytes"
            ));
        }
        if self.resource_type == ResourceType::Cluster && self.resource_name != CLUSTER_NAME {
            return invalid(format!(
                "the cluster resource is named {CLUSTER_NAME}, not {:?}",
                self.resource_name
            ));
        }
        if self.pattern_type == PatternType::Prefixed && self.resource_name == "*" {
            return invalid(
                "a prefixed rule cannot be named *: use a literal * for every name".into(),
            );
        }
        match self.principal.strip_prefix("User:") {
            Some(user) if !user.is_empty() && self.principal.len() <= ACL_NAME_BYTES_MAX => {}
            _ => {
                return invalid(format!(
                    "principal {:?}: a principal is User:<name> or User:*",
                    self.principal
                ));
            }
        }
        if self.host != "*" && self.host.parse::<IpAddr>().is_err() {
            return invalid(format!(
                "host {:?}: a host is * or an IP address",
                self.host
            ));
        }
        Ok(())
    }

    /// The rule's key in the metadata store: every field, so equal rules are stored once.
    fn key(&self) -> String {
        format!(
            "{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}",
            self.resource_type,
            self.pattern_type,
            self.resource_name,
            self.principal,
            self.host,
            self.operation,
            self.permission
        )
    }

    fn covers(&self, resource_type: ResourceType, name: &str) -> bool {
        self.resource_type == resource_type
            && match self.pattern_type {
                PatternType::Literal => self.resource_name == "*" || self.resource_name == name,
                PatternType::Prefixed => name.starts_with(&self.resource_name),
            }
    }

    fn applies_to(&self, user: &str, host: IpAddr) -> bool {
        let principal = self.principal.strip_prefix("User:").unwrap_or_default();
        (principal == "*" || principal == user)
            && (self.host == "*" || self.host.parse::<IpAddr>().is_ok_and(|h| h == host))
    }
}

impl fmt::Display for Acl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} on {} {} {:?} from {}",
            self.permission,
            self.principal,
            self.operation,
            self.pattern_type,
            self.resource_type,
            self.resource_name,
            self.host
        )
    }
}

/// Which rules a describe or delete is about; `None` matches anything (Kafka's `ANY`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AclFilter {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_type: Option<ResourceType>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pattern_type: Option<PatternFilter>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permission: Option<Permission>,
}

/// How a filter matches resource names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PatternFilter {
    /// Rules of exactly this pattern type and name.
    Literal,
    Prefixed,
    /// Rules that would apply to the named resource: literal, `*` or a prefix of it.
    Match,
}

impl AclFilter {
    /// Whether the filter matches every rule.
    pub fn is_empty(&self) -> bool {
        self.resource_type.is_none()
            && self.resource_name.is_none()
            && self.pattern_type.is_none()
            && self.principal.is_none()
            && self.host.is_none()
            && self.operation.is_none()
            && self.permission.is_none()
    }

    pub fn matches(&self, acl: &Acl) -> bool {
        let name_matches = match (&self.resource_name, self.pattern_type) {
            (None, None | Some(PatternFilter::Match)) => true,
            (None, Some(PatternFilter::Literal)) => acl.pattern_type == PatternType::Literal,
            (None, Some(PatternFilter::Prefixed)) => acl.pattern_type == PatternType::Prefixed,
            (Some(name), None) => &acl.resource_name == name,
            (Some(name), Some(PatternFilter::Literal)) => {
                acl.pattern_type == PatternType::Literal && &acl.resource_name == name
            }
            (Some(name), Some(PatternFilter::Prefixed)) => {
                acl.pattern_type == PatternType::Prefixed && &acl.resource_name == name
            }
            (Some(name), Some(PatternFilter::Match)) => acl.covers(acl.resource_type, name),
        };
        name_matches
            && self.resource_type.is_none_or(|t| t == acl.resource_type)
            && self.principal.as_ref().is_none_or(|p| p == &acl.principal)
            && self.host.as_ref().is_none_or(|h| h == &acl.host)
            && self.operation.is_none_or(|o| o == acl.operation)
            && self.permission.is_none_or(|p| p == acl.permission)
    }
}

/// The rules of a node.
pub struct Acls {
    tree: Tree<Acl>,
    /// What checks read; replaced whole after every change.
    rules: RwLock<Arc<Vec<Acl>>>,
}

impl Acls {
    /// The rules of `tree`: the node's [`ACLS_TREE`], or the cluster's.
    pub fn open(tree: Tree<Acl>) -> Result<Acls, AclError> {
        let rules = tree.all()?.into_iter().map(|(_, acl)| acl).collect();
        Ok(Acls {
            tree,
            rules: RwLock::new(Arc::new(rules)),
        })
    }

    /// Reads the rules again, as another node of a cluster changed them.
    pub fn reload(&self) -> Result<(), AclError> {
        let rules = self.tree.all()?.into_iter().map(|(_, acl)| acl).collect();
        *locks::write(&self.rules) = Arc::new(rules);
        Ok(())
    }

    fn snapshot(&self) -> Arc<Vec<Acl>> {
        locks::read(&self.rules).clone()
    }

    /// Adds rules, all or none (one already there is left as it is), each checked first.
    pub fn add(&self, acls: &[Acl]) -> Result<(), AclError> {
        for acl in acls {
            acl.validate()?;
        }
        let entries = acls.iter().map(|acl| (acl.key(), acl));
        let added = self
            .tree
            .insert_within(entries, ACLS_MAX, Present::Replace)?;
        if let Bounded::Full { existing } = added {
            return Err(AclError::TooMany {
                existing,
                added: acls.len(),
            });
        }
        self.reload()
    }

    /// Removes the rules `filter` matches and returns them.
    pub fn delete(&self, filter: &AclFilter) -> Result<Vec<Acl>, AclError> {
        let gone: Vec<Acl> = self.list(filter);
        for acl in &gone {
            self.tree.remove(&acl.key())?;
        }
        self.reload()?;
        Ok(gone)
    }

    pub fn list(&self, filter: &AclFilter) -> Vec<Acl> {
        self.snapshot()
            .iter()
            .filter(|acl| filter.matches(acl))
            .cloned()
            .collect()
    }

    pub fn count(&self) -> usize {
        self.snapshot().len()
    }

    /// Whether some rule allows `user` at `host` to do `operation` on the resource and none
    /// denies it.
    pub fn allows(
        &self,
        user: &str,
        host: IpAddr,
        operation: Operation,
        resource_type: ResourceType,
        name: &str,
    ) -> bool {
        let rules = self.snapshot();
        let applicable = rules
            .iter()
            .filter(|acl| acl.covers(resource_type, name) && acl.applies_to(user, host));
        let mut allowed = false;
        for acl in applicable {
            match acl.permission {
                Permission::Deny if acl.operation.denies(operation) => return false,
                Permission::Allow if acl.operation.allows(operation) => allowed = true,
                _ => {}
            }
        }
        allowed
    }

    /// Whether `user` may write to some topic: what an idempotent producer needs when it has
    /// no `IDEMPOTENT_WRITE` on the cluster (Kafka's KIP-679).
    pub fn allows_some_write(&self, user: &str, host: IpAddr) -> bool {
        self.snapshot().iter().any(|acl| {
            acl.resource_type == ResourceType::Topic
                && acl.permission == Permission::Allow
                && acl.operation.allows(Operation::Write)
                && acl.applies_to(user, host)
        })
    }
}

/// Who is asking, as a listener knows it: everyone on an open node, or a SASL user.
#[derive(Clone)]
pub enum Caller {
    /// The node does not authenticate (`--kafka-auth none`): everything is allowed.
    Anyone,
    /// An authenticated user; `super_user` passes every check.
    User {
        name: String,
        host: IpAddr,
        super_user: bool,
        acls: Arc<Acls>,
    },
}

/// A refusal: what was asked, on what, by whom. Its text is what a client or log is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub operation: Operation,
    pub resource_type: ResourceType,
    pub name: String,
    pub user: String,
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "user {} may not {} {} {:?}: no ACL allows it",
            self.user,
            self.operation,
            self.resource_type.name().to_lowercase(),
            self.name
        )
    }
}

impl Caller {
    /// Allowed, or why not. A refusal is logged, so an operator can see which rule is missing.
    pub fn check(
        &self,
        operation: Operation,
        resource_type: ResourceType,
        name: &str,
    ) -> Result<(), Denied> {
        match self {
            Caller::Anyone => Ok(()),
            Caller::User {
                super_user: true, ..
            } => Ok(()),
            Caller::User {
                name: user,
                host,
                acls,
                ..
            } => {
                if acls.allows(user, *host, operation, resource_type, name) {
                    return Ok(());
                }
                let denied = Denied {
                    operation,
                    resource_type,
                    name: name.to_string(),
                    user: user.clone(),
                };
                tracing::info!("refused: {denied}");
                Err(denied)
            }
        }
    }

    /// Whether the caller may `operation` the resource, without logging a refusal: for lists
    /// that leave out what the caller may not see.
    pub fn may(&self, operation: Operation, resource_type: ResourceType, name: &str) -> bool {
        match self {
            Caller::Anyone => true,
            Caller::User {
                name: user,
                host,
                super_user,
                acls,
            } => *super_user || acls.allows(user, *host, operation, resource_type, name),
        }
    }

    /// What creating topic `name` needs: CREATE on the cluster or on the topic.
    pub fn check_create_topic(&self, name: &str) -> Result<(), Denied> {
        if self.may(Operation::Create, ResourceType::Cluster, CLUSTER_NAME) {
            return Ok(());
        }
        self.check(Operation::Create, ResourceType::Topic, name)
    }

    /// The table checks of a SQL statement run for this caller; `None` when every table and
    /// row is allowed (an open node, the admin token, a super user).
    pub fn table_access(&self) -> Option<Arc<dyn TableAccess>> {
        match self {
            Caller::User {
                super_user: false, ..
            } => Some(Arc::new(self.clone())),
            _ => None,
        }
    }

    /// What running pipeline `spec` takes: READ on its input, WRITE on every output and on its
    /// dead-letter topic.
    pub fn check_pipeline(&self, spec: &PipelineSpec) -> Result<(), Denied> {
        self.check(Operation::Read, ResourceType::Topic, &spec.from)?;
        for topic in spec
            .to
            .iter()
            .chain(std::iter::once(&spec.dead_letter_topic()))
        {
            self.check(Operation::Write, ResourceType::Topic, topic)?;
        }
        Ok(())
    }

    /// Whether the caller is shown pipeline `spec`: it may describe its input and every output.
    pub fn sees_pipeline(&self, spec: &PipelineSpec) -> bool {
        std::iter::once(&spec.from)
            .chain(&spec.to)
            .all(|topic| self.may(Operation::Describe, ResourceType::Topic, topic))
    }

    /// Who a pipeline this caller creates runs as: `None` for callers with the node's rights.
    pub fn owner(&self) -> Option<Owner> {
        match self {
            Caller::User {
                name,
                host,
                super_user: false,
                ..
            } => Some(Owner {
                user: name.clone(),
                host: host.to_string(),
            }),
            _ => None,
        }
    }

    /// Whether the caller may pause, resume or delete a pipeline owned by `owner`: its owner,
    /// or a caller with the node's rights.
    pub fn manages(&self, owner: Option<&Owner>) -> bool {
        match (self.owner(), owner) {
            (None, _) => true,
            (Some(me), Some(owner)) => me.user == owner.user,
            (Some(_), None) => false,
        }
    }

    /// What an idempotent producer needs: `IDEMPOTENT_WRITE` on the cluster, or `WRITE` on
    /// some topic.
    pub fn check_idempotent_write(&self) -> Result<(), Denied> {
        match self {
            Caller::User {
                name,
                host,
                super_user: false,
                acls,
            } if !acls.allows_some_write(name, *host) => self.check(
                Operation::IdempotentWrite,
                ResourceType::Cluster,
                CLUSTER_NAME,
            ),
            _ => Ok(()),
        }
    }
}

/// A pipeline's rights, checked before every step against the ACLs as they are now: its owner
/// as a user connected from the host it created the pipeline from.
pub struct PipelineRights {
    pub acls: Arc<Acls>,
    pub super_users: Arc<[String]>,
}

impl Rights for PipelineRights {
    fn check(&self, owner: &Owner, spec: &PipelineSpec) -> Result<(), String> {
        let caller = Caller::User {
            name: owner.user.clone(),
            host: owner.host.parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
            super_user: self.super_users.contains(&owner.user),
            acls: self.acls.clone(),
        };
        caller
            .check_pipeline(spec)
            .map_err(|denied| denied.to_string())
    }
}

/// SQL on behalf of a user: topics (schema `public`) need READ to be queried, WRITE for
/// `INSERT` and CREATE for `CREATE TABLE … AS`. The system tables (schema `weir`) show the rows
/// of the topics and groups the user may describe, as Kafka's Metadata and ListGroups do; those
/// about the node as a whole (`plugins`, `connections`) need DESCRIBE on the cluster. The
/// catalogs clients read (`pg_catalog`, `information_schema`) are open.
impl TableAccess for Caller {
    fn check(&self, schema: &str, table: &str, usage: TableUse) -> Result<(), String> {
        let checked = match (schema, usage) {
            ("weir", _) if matches!(table, "topics" | "partitions" | "groups" | "pipelines") => {
                Ok(())
            }
            ("public", TableUse::Read) => {
                Caller::check(self, Operation::Read, ResourceType::Topic, table)
            }
            ("public", TableUse::Write) => {
                Caller::check(self, Operation::Write, ResourceType::Topic, table)
            }
            ("public", TableUse::Create) => self.check_create_topic(table),
            ("weir", _) => Caller::check(
                self,
                Operation::Describe,
                ResourceType::Cluster,
                CLUSTER_NAME,
            ),
            _ => Ok(()),
        };
        checked.map_err(|denied| denied.to_string())
    }

    fn sees_topic(&self, name: &str) -> bool {
        self.may(Operation::Describe, ResourceType::Topic, name)
    }

    fn sees_group(&self, name: &str) -> bool {
        self.may(Operation::Describe, ResourceType::Group, name)
    }

    fn runs_as(&self) -> Option<Owner> {
        self.owner()
    }

    fn may_run(&self, spec: &PipelineSpec) -> Result<(), String> {
        self.check_pipeline(spec)
            .map_err(|denied| denied.to_string())
    }

    fn may_manage(&self, owner: Option<&Owner>) -> bool {
        self.manages(owner)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

    use super::*;

    fn rule(
        resource_type: ResourceType,
        name: &str,
        pattern_type: PatternType,
        principal: &str,
        operation: Operation,
        permission: Permission,
    ) -> Acl {
        Acl {
            resource_type,
            resource_name: name.into(),
            pattern_type,
            principal: principal.into(),
            host: "*".into(),
            operation,
            permission,
        }
    }

    fn acls(rules: &[Acl]) -> (tempfile::TempDir, Acls) {
        let dir = tempfile::tempdir().unwrap();
        let meta = weir_storage::MetaStore::open(dir.path()).unwrap();
        let acls = Acls::open(meta.tree(ACLS_TREE).unwrap()).unwrap();
        acls.add(rules).unwrap();
        (dir, acls)
    }

    const HOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    /// A cluster keeps rules under their keys in its database, whose keys are bounded: the
    /// longest rule a node accepts must fit.
    #[test]
    fn the_longest_valid_rule_has_a_key_a_cluster_can_store() {
        fn longest<T: Copy>(all: &[T], name: impl Fn(T) -> &'static str) -> T {
            *all.iter().max_by_key(|v| name(**v).len()).unwrap()
        }
        // The cluster resource has one fixed name; every other type takes any name.
        let named: Vec<ResourceType> = ResourceType::ALL_VALUES
            .iter()
            .copied()
            .filter(|t| *t != ResourceType::Cluster)
            .collect();
        let longest_rule = Acl {
            resource_type: longest(&named, ResourceType::name),
            resource_name: "n".repeat(ACL_NAME_BYTES_MAX),
            pattern_type: longest(PatternType::ALL_VALUES, PatternType::name),
            principal: format!("User:{}", "u".repeat(ACL_NAME_BYTES_MAX - 5)),
            host: "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255".into(),
            operation: longest(Operation::ALL_VALUES, Operation::name),
            permission: longest(Permission::ALL_VALUES, Permission::name),
        };
        longest_rule.validate().unwrap();
        assert!(longest_rule.key().len() <= weir_cluster::META_KEY_BYTES_MAX);
        assert!(ACLS_TREE.len() <= weir_cluster::META_TREE_BYTES_MAX);
    }

    #[test]
    fn nothing_is_allowed_without_a_rule_and_deny_wins() {
        use Operation::*;
        use ResourceType::Topic;
        let (_dir, acls) = acls(&[
            rule(
                Topic,
                "logs-",
                PatternType::Prefixed,
                "User:alice",
                Read,
                Permission::Allow,
            ),
            rule(
                Topic,
                "*",
                PatternType::Literal,
                "User:*",
                Describe,
                Permission::Allow,
            ),
            rule(
                Topic,
                "logs-secret",
                PatternType::Literal,
                "User:alice",
                All,
                Permission::Deny,
            ),
        ]);
        assert!(acls.allows("alice", HOST, Read, Topic, "logs-web"));
        // READ implies DESCRIBE; nothing implies WRITE.
        assert!(acls.allows("alice", HOST, Describe, Topic, "logs-web"));
        assert!(!acls.allows("alice", HOST, Write, Topic, "logs-web"));
        assert!(!acls.allows("alice", HOST, Read, Topic, "metrics"));
        assert!(acls.allows("bob", HOST, Describe, Topic, "metrics"));
        assert!(!acls.allows("bob", HOST, Read, Topic, "logs-web"));
        assert!(!acls.allows("alice", HOST, Read, Topic, "logs-secret"));
        assert!(!acls.allows("alice", HOST, Describe, Topic, "logs-secret"));
        assert!(!acls.allows("alice", HOST, Read, ResourceType::Group, "logs-web"));
    }

    #[test]
    fn hosts_limit_a_rule_and_bad_rules_are_refused() {
        let mut limited = rule(
            ResourceType::Group,
            "g",
            PatternType::Literal,
            "User:alice",
            Operation::Read,
            Permission::Allow,
        );
        limited.host = "10.0.0.1".into();
        let (_dir, acls) = acls(std::slice::from_ref(&limited));
        assert!(!acls.allows("alice", HOST, Operation::Read, ResourceType::Group, "g"));
        let other: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(acls.allows("alice", other, Operation::Read, ResourceType::Group, "g"));
        for bad in [
            Acl {
                principal: "alice".into(),
                ..limited.clone()
            },
            Acl {
                host: "example.com".into(),
                ..limited.clone()
            },
            Acl {
                resource_type: ResourceType::Cluster,
                ..limited.clone()
            },
            Acl {
                resource_name: String::new(),
                ..limited.clone()
            },
        ] {
            assert!(matches!(acls.add(&[bad]), Err(AclError::Invalid(_))));
        }
        assert_eq!(acls.count(), 1);
    }

    #[test]
    fn filters_find_and_delete_rules_and_names_parse_as_kafka_spells_them() {
        let (_dir, acls) = acls(&[
            rule(
                ResourceType::Topic,
                "a",
                PatternType::Literal,
                "User:x",
                Operation::Read,
                Permission::Allow,
            ),
            rule(
                ResourceType::Topic,
                "a",
                PatternType::Prefixed,
                "User:x",
                Operation::Write,
                Permission::Allow,
            ),
            rule(
                ResourceType::Group,
                "a",
                PatternType::Literal,
                "User:y",
                Operation::Read,
                Permission::Deny,
            ),
        ]);
        let matching = AclFilter {
            resource_type: Some(ResourceType::Topic),
            resource_name: Some("abc".into()),
            pattern_type: Some(PatternFilter::Match),
            ..AclFilter::default()
        };
        assert_eq!(acls.list(&matching).len(), 1);
        let by_user = AclFilter {
            principal: Some("User:x".into()),
            ..AclFilter::default()
        };
        assert_eq!(acls.delete(&by_user).unwrap().len(), 2);
        assert_eq!(acls.count(), 1);
        assert_eq!(
            "describe-configs".parse::<Operation>().unwrap(),
            Operation::DescribeConfigs
        );
        assert_eq!(Operation::from_code(4), Some(Operation::Write));
        assert!(
            "reed"
                .parse::<Operation>()
                .unwrap_err()
                .to_string()
                .contains("READ")
        );
    }
}
