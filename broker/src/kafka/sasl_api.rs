//! SaslHandshake and SaslAuthenticate on one connection. Handshake v0 (raw SASL tokens after
//! it, from clients before Kafka 1.0) is advertised, because librdkafka looks for it before it
//! uses v1, and refused with UNSUPPORTED_VERSION. With `--kafka-auth sasl` a
//! connection may send only ApiVersions and these two until it has authenticated; a failed
//! authentication is answered and the connection closed, as Kafka does.

use std::sync::Arc;

use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};

use kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
use kafka_protocol::messages::describe_user_scram_credentials_response::{
    CredentialInfo, DescribeUserScramCredentialsResult,
};
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse, ApiKey,
    DescribeUserScramCredentialsRequest, DescribeUserScramCredentialsResponse,
    SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::{KafkaAuth, Shared, protocol};
use crate::acl::{CLUSTER_NAME, Caller, Operation, ResourceType};
use crate::error::{Result, task};
use crate::sasl::{
    AUTHENTICATION_FAILED, Exchange, MECHANISMS, Scram, ScramCredential, Step, UserError, Users,
};

const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
const UNSUPPORTED_VERSION: i16 = 35;
const ILLEGAL_SASL_STATE: i16 = 34;
const SASL_AUTHENTICATION_FAILED: i16 = 58;
const UNKNOWN_SERVER_ERROR: i16 = -1;
const CLUSTER_AUTHORIZATION_FAILED: i16 = 31;
const RESOURCE_NOT_FOUND: i16 = 91;
const DUPLICATE_RESOURCE: i16 = 92;
const UNACCEPTABLE_CREDENTIAL: i16 = 93;

/// Where a connection stands with authentication.
#[derive(Default)]
pub(crate) struct Session {
    /// The authenticated user.
    pub(crate) user: Option<String>,
    exchange: Option<Exchange>,
    /// Set when authentication failed: the answer is sent, then the connection closed.
    pub(crate) failed: Option<String>,
}

impl Session {
    /// Refuses a request that needs an authenticated client when there is none.
    pub(crate) fn admit(&self, auth: KafkaAuth, key: ApiKey) -> Result<()> {
        if auth == KafkaAuth::Sasl && self.user.is_none() && key != ApiKey::ApiVersions {
            return Err(protocol(format!(
                "{key:?} before SASL authentication: this listener requires SASL \
                 (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)"
            )));
        }
        Ok(())
    }

    pub(crate) fn handshake(
        &mut self,
        auth: KafkaAuth,
        request: &SaslHandshakeRequest,
        version: i16,
    ) -> SaslHandshakeResponse {
        let mut response = SaslHandshakeResponse::default();
        if auth == KafkaAuth::None {
            // Offer nothing: the client learns the listener does not use SASL.
            response.error_code = UNSUPPORTED_SASL_MECHANISM;
            return response;
        }
        response.mechanisms = MECHANISMS
            .iter()
            .map(|m| StrBytes::from_static_str(m))
            .collect();
        if version == 0 {
            response.error_code = UNSUPPORTED_VERSION;
            return response;
        }
        if self.user.is_some() || self.exchange.is_some() {
            response.error_code = ILLEGAL_SASL_STATE;
            return response;
        }
        match Exchange::new(request.mechanism.as_str()) {
            Some(exchange) => self.exchange = Some(exchange),
            None => response.error_code = UNSUPPORTED_SASL_MECHANISM,
        }
        response
    }

    /// Takes one SASL message; the key derivation runs on the blocking pool.
    pub(crate) async fn authenticate(
        &mut self,
        shared: &Arc<Shared>,
        request: SaslAuthenticateRequest,
        peer: std::net::SocketAddr,
    ) -> Result<SaslAuthenticateResponse> {
        let mut response = SaslAuthenticateResponse::default();
        let Some(mut exchange) = self.exchange.take() else {
            response.error_code = ILLEGAL_SASL_STATE;
            response.error_message = Some(StrBytes::from_static_str(
                "SaslAuthenticate without a SaslHandshake naming a mechanism first",
            ));
            self.failed = Some("SaslAuthenticate out of order".into());
            return Ok(response);
        };
        let (exchange, step) = with_users(shared, "authenticating", move |users| {
            let step = exchange.step(users, &request.auth_bytes);
            (exchange, step)
        })
        .await?;
        match step {
            Step::Continue(bytes) => {
                response.auth_bytes = Bytes::from(bytes);
                self.exchange = Some(exchange);
            }
            Step::Done {
                user,
                response: bytes,
            } => {
                tracing::info!(%peer, %user, "Kafka client authenticated");
                response.auth_bytes = Bytes::from(bytes);
                self.user = Some(user);
            }
            Step::Failed(reason) => {
                tracing::info!(%peer, %reason, "Kafka client failed to authenticate");
                shared.metrics.authentication_failed();
                response.error_code = SASL_AUTHENTICATION_FAILED;
                response.error_message = Some(StrBytes::from_static_str(AUTHENTICATION_FAILED));
                self.failed = Some(reason);
            }
        }
        Ok(response)
    }
}

impl Session {
    /// Who this connection acts as: anyone when the listener does not authenticate, else its
    /// user, checked against the ACLs.
    pub(crate) fn caller(&self, shared: &Shared, peer: std::net::SocketAddr) -> Caller {
        match (&self.user, shared.config.auth) {
            (Some(user), KafkaAuth::Sasl) => Caller::User {
                super_user: shared.config.super_users.contains(user),
                name: user.clone(),
                host: peer.ip(),
                acls: shared.acls.clone(),
            },
            _ => Caller::Anyone,
        }
    }
}

/// Reading credentials needs DESCRIBE on the cluster, as in Kafka (super users pass).
pub(crate) async fn describe_credentials(
    shared: &Arc<Shared>,
    caller: &Caller,
    request: DescribeUserScramCredentialsRequest,
) -> Result<DescribeUserScramCredentialsResponse> {
    let what = "describing SCRAM credentials";
    with_users_as(
        shared,
        caller,
        Operation::Describe,
        what,
        move |users, allowed| describe(users, allowed, &request),
    )
    .await
}

/// Changing credentials needs ALTER on the cluster.
pub(crate) async fn alter_credentials(
    shared: &Arc<Shared>,
    caller: &Caller,
    request: AlterUserScramCredentialsRequest,
) -> Result<AlterUserScramCredentialsResponse> {
    let what = "altering SCRAM credentials";
    with_users_as(
        shared,
        caller,
        Operation::Alter,
        what,
        move |users, allowed| alter(users, allowed, request),
    )
    .await
}

/// [`with_users`], telling `f` whether `caller` may do `operation` on the cluster.
async fn with_users_as<T: Send + 'static>(
    shared: &Arc<Shared>,
    caller: &Caller,
    operation: Operation,
    what: &'static str,
    f: impl FnOnce(&Users, bool) -> T + Send + 'static,
) -> Result<T> {
    let allowed = caller
        .check(operation, ResourceType::Cluster, CLUSTER_NAME)
        .is_ok();
    with_users(shared, what, move |users| f(users, allowed)).await
}

/// Runs `f` over the node's users on the blocking pool, in one of the password check slots: key
/// derivations and the metadata store are not for a reactor thread.
async fn with_users<T: Send + 'static>(
    shared: &Arc<Shared>,
    what: &'static str,
    f: impl FnOnce(&Users) -> T + Send + 'static,
) -> Result<T> {
    shared.users.on_blocking_pool(f).await.map_err(task(what))
}

const NOT_A_SUPER_USER: &str = "only a super user (--super-users) may read or change credentials";

/// DescribeUserScramCredentials: the mechanisms and iterations of the users asked for (all when
/// none are named), never keys or salts.
fn describe(
    users: &Users,
    allowed: bool,
    request: &DescribeUserScramCredentialsRequest,
) -> DescribeUserScramCredentialsResponse {
    let mut response = DescribeUserScramCredentialsResponse::default();
    let failed = |response: &mut DescribeUserScramCredentialsResponse, code, message: String| {
        response.error_code = code;
        response.error_message = Some(StrBytes::from_string(message));
    };
    if !allowed {
        failed(
            &mut response,
            CLUSTER_AUTHORIZATION_FAILED,
            NOT_A_SUPER_USER.into(),
        );
        return response;
    }
    let all: BTreeMap<String, _> = match users.list() {
        Ok(all) => all.into_iter().collect(),
        Err(e) => {
            failed(&mut response, UNKNOWN_SERVER_ERROR, e.to_string());
            return response;
        }
    };
    let asked: Vec<String> = match &request.users {
        Some(names) if !names.is_empty() => names.iter().map(|u| u.name.to_string()).collect(),
        _ => all.keys().cloned().collect(),
    };
    let mut seen = BTreeSet::new();
    let repeated: BTreeSet<&String> = asked.iter().filter(|n| !seen.insert(*n)).collect();
    let mut reported = BTreeSet::new();
    for name in &asked {
        if !reported.insert(name) {
            continue;
        }
        let mut result = DescribeUserScramCredentialsResult::default();
        result.user = StrBytes::from_string(name.clone());
        match all.get(name) {
            _ if repeated.contains(name) => {
                result.error_code = DUPLICATE_RESOURCE;
                result.error_message = Some(StrBytes::from_string(format!(
                    "user {name} is named more than once"
                )));
            }
            Some(credentials) => {
                result.credential_infos = credentials
                    .scram
                    .iter()
                    .filter_map(|(mechanism, credential)| {
                        let mut info = CredentialInfo::default();
                        info.mechanism = Scram::named(mechanism)?.kafka_id();
                        info.iterations = i32::try_from(credential.iterations).ok()?;
                        Some(info)
                    })
                    .collect();
            }
            None => {
                result.error_code = RESOURCE_NOT_FOUND;
                result.error_message = Some(StrBytes::from_string(format!(
                    "user {name} has no SCRAM credentials"
                )));
            }
        }
        response.results.push(result);
    }
    response
}

/// AlterUserScramCredentials: deletions, then upsertions (salted passwords, as Kafka's clients
/// send them); one result per user, its first error.
fn alter(
    users: &Users,
    allowed: bool,
    request: AlterUserScramCredentialsRequest,
) -> AlterUserScramCredentialsResponse {
    let mut outcomes: BTreeMap<String, (i16, Option<String>)> = BTreeMap::new();
    let mut note = |name: &str, code: i16, message: Option<String>| {
        let outcome = outcomes.entry(name.to_string()).or_insert((0, None));
        if outcome.0 == 0 {
            *outcome = (code, message);
        }
    };
    let mut pairs = BTreeMap::new();
    for (name, mechanism) in request
        .deletions
        .iter()
        .map(|d| (d.name.to_string(), d.mechanism))
        .chain(
            request
                .upsertions
                .iter()
                .map(|u| (u.name.to_string(), u.mechanism)),
        )
    {
        *pairs.entry((name, mechanism)).or_insert(0) += 1;
    }
    let check = |name: &str, mechanism: i8| -> std::result::Result<Scram, (i16, String)> {
        if !allowed {
            return Err((CLUSTER_AUTHORIZATION_FAILED, NOT_A_SUPER_USER.into()));
        }
        if pairs
            .get(&(name.to_string(), mechanism))
            .copied()
            .unwrap_or(0)
            > 1
        {
            return Err((
                DUPLICATE_RESOURCE,
                format!("user {name} and mechanism {mechanism} are altered more than once"),
            ));
        }
        Scram::with_kafka_id(mechanism).ok_or((
            UNSUPPORTED_SASL_MECHANISM,
            format!("mechanism {mechanism} is not SCRAM-SHA-256 (1) or SCRAM-SHA-512 (2)"),
        ))
    };
    let user_error = |e: UserError| match e {
        UserError::Unknown(_) => (RESOURCE_NOT_FOUND, e.to_string()),
        UserError::Invalid(_) | UserError::TooMany => (UNACCEPTABLE_CREDENTIAL, e.to_string()),
        UserError::Storage(_) => (UNKNOWN_SERVER_ERROR, e.to_string()),
    };
    for deletion in &request.deletions {
        let name = deletion.name.as_str();
        let done = check(name, deletion.mechanism)
            .and_then(|scram| users.remove_credential(name, scram).map_err(user_error));
        match done {
            Ok(()) => note(name, 0, None),
            Err((code, message)) => note(name, code, Some(message)),
        }
    }
    for upsertion in &request.upsertions {
        let name = upsertion.name.as_str();
        let done = check(name, upsertion.mechanism).and_then(|scram| {
            if upsertion.salted_password.len() != scram.output_bytes() || upsertion.salt.is_empty()
            {
                return Err((
                    UNACCEPTABLE_CREDENTIAL,
                    format!(
                        "a {} credential needs a salt and a salted password of {} bytes",
                        scram.name(),
                        scram.output_bytes()
                    ),
                ));
            }
            let iterations = u32::try_from(upsertion.iterations).unwrap_or(0);
            let credential = ScramCredential::from_salted(
                scram,
                &upsertion.salted_password,
                &upsertion.salt,
                iterations,
            );
            users
                .set_credential(name, scram, credential)
                .map_err(user_error)
        });
        match done {
            Ok(()) => {
                tracing::info!(user = %name, "SCRAM credential set through the Kafka API");
                note(name, 0, None);
            }
            Err((code, message)) => note(name, code, Some(message)),
        }
    }
    let mut response = AlterUserScramCredentialsResponse::default();
    response.results = outcomes
        .into_iter()
        .map(|(name, (code, message))| {
            let mut result = AlterUserScramCredentialsResult::default();
            result.user = StrBytes::from_string(name);
            result.error_code = code;
            result.error_message = message.map(StrBytes::from_string);
            result
        })
        .collect();
    response
}
