//! SaslHandshake and SaslAuthenticate on one connection. Handshake v0 (raw SASL tokens after
//! it, from clients before Kafka 1.0) is advertised, because librdkafka looks for it before it
//! uses v1, and refused with UNSUPPORTED_VERSION. With `--kafka-auth sasl` a
//! connection may send only ApiVersions and these two until it has authenticated; a failed
//! authentication is answered and the connection closed, as Kafka does.

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::{
    ApiKey, SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest,
    SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::{KafkaAuth, Shared, protocol};
use crate::error::{Result, task};
use crate::sasl::{AUTHENTICATION_FAILED, Exchange, MECHANISMS, Step};

const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
const UNSUPPORTED_VERSION: i16 = 35;
const ILLEGAL_SASL_STATE: i16 = 34;
const SASL_AUTHENTICATION_FAILED: i16 = 58;

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
        let users = shared.users.clone();
        let (exchange, step) = tokio::task::spawn_blocking(move || {
            let step =
                weir_storage::reactor::blocking(|| exchange.step(&users, &request.auth_bytes));
            (exchange, step)
        })
        .await
        .map_err(task("authenticating"))?;
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
