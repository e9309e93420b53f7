//! Group requests sent to a node that does not coordinate the group go on to the node that does.
//! On a cluster one node holds each group's lease, and only it knows the group's members and
//! may write its offsets. So the answer to a `/v1/groups/{id}` request comes from that node,
//! whichever node the client asked.

use axum::extract::{FromRequestParts, OriginalUri};
use axum::http::request::Parts;
use std::net::IpAddr;

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{ApiError, ApiResult, AppState, blocking};
use crate::error::Result;
use crate::tls::TlsFiles;

/// Marks a request that one node sent on to another. The node receiving it answers it itself,
/// so a request moves at most once, even while the group's lease changes hands.
const FORWARDED_BY: &str = "weir-forwarded-by";
/// The host of the client of a request one node sent on to another, as the sending node saw
/// it. Believed only from the address of a live node of the cluster
/// ([`AppState::client_host`]), so a client cannot choose the host its ACL rules are checked
/// against.
const FORWARDED_FOR: &str = "weir-forwarded-for";
/// Largest answer this node takes back from the coordinating node.
const FORWARDED_ANSWER_BYTES_MAX: u64 = 16 << 20;

/// How a node of a cluster sends a request on to another node.
pub struct Peers {
    agent: ureq::Agent,
    scheme: &'static str,
}

impl Peers {
    /// Plain HTTP. With `tls`, HTTPS that trusts the CAs in the node's own certificate file, so
    /// nodes whose certificates one CA signed trust each other. When the nodes ask clients for a
    /// certificate (`--tls-client-ca`), the node presents its own.
    pub fn new(tls: Option<&TlsFiles>) -> Result<Peers> {
        let (config, scheme) = match tls {
            None => (ureq::tls::TlsConfig::default(), "http"),
            Some(files) => {
                let identity = files
                    .client_ca
                    .as_ref()
                    .map(|_| (files.cert.as_path(), files.key.as_path()));
                (
                    crate::cli::tls_config(Some(&files.cert), identity)?,
                    "https",
                )
            }
        };
        Ok(Peers {
            agent: crate::cli::agent(config),
            scheme,
        })
    }

    /// Sends the request to the node listening at `home`, from node `by`, and answers with the
    /// status, content type and body it answered. Blocks.
    fn send(&self, home: &str, head: &Head, body: Vec<u8>, by: i32) -> Response {
        let answer = match self.call(home, head, body, by) {
            Ok(answer) => answer,
            Err(reason) => {
                return ApiError {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    message: format!(
                        "the node coordinating the group, at {home}, did not answer ({reason}); \
                         ask again: the group moves to a live node when its lease runs out"
                    ),
                }
                .into_response();
            }
        };
        let mut response = (answer.status, answer.body).into_response();
        response.headers_mut().remove(header::CONTENT_TYPE);
        if let Some(content_type) = answer.content_type {
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, content_type);
        }
        response
    }

    /// The request sent to the node listening at `home`, from node `by`, and what it
    /// answered, or why it did not. Blocks.
    fn call(&self, home: &str, head: &Head, body: Vec<u8>, by: i32) -> Result<Answer, String> {
        let url = format!("{}://{home}{}", self.scheme, head.path);
        let mut builder = ureq::http::Request::builder()
            .method(head.method.as_str())
            .uri(&url)
            .header(FORWARDED_BY, by.to_string());
        if let Some(client) = head.client {
            builder = builder.header(FORWARDED_FOR, client.to_string());
        }
        for (name, value) in [
            (header::AUTHORIZATION, &head.authorization),
            (header::CONTENT_TYPE, &head.content_type),
        ] {
            if let Some(value) = value {
                builder = builder.header(name.as_str(), value.as_bytes());
            }
        }
        let request = builder.body(body).map_err(|e| e.to_string())?;
        let mut answer = self.agent.run(request).map_err(|e| e.to_string())?;
        let body = answer
            .body_mut()
            .with_config()
            .limit(FORWARDED_ANSWER_BYTES_MAX)
            .read_to_vec()
            .map_err(|e| e.to_string())?;
        Ok(Answer {
            status: StatusCode::from_u16(answer.status().as_u16())
                .unwrap_or(StatusCode::BAD_GATEWAY),
            content_type: answer
                .headers()
                .get(header::CONTENT_TYPE.as_str())
                .and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok()),
            body,
        })
    }
}

/// What another node answered.
struct Answer {
    status: StatusCode,
    content_type: Option<HeaderValue>,
    body: Vec<u8>,
}

/// What of a request's head goes on to another node: its method, whole path and query,
/// credentials and client host; and whether another node sent it here.
#[derive(Clone)]
pub(super) struct Head {
    method: Method,
    path: String,
    authorization: Option<HeaderValue>,
    content_type: Option<HeaderValue>,
    client: Option<IpAddr>,
    forwarded: bool,
}

/// The host a request's client is checked as, which authentication puts in the request's
/// extensions: see [`AppState::client_host`].
#[derive(Clone, Copy)]
pub(super) struct ClientHost(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for Head {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Head, Self::Rejection> {
        // The path as the client sent it, before a nested router took off its prefix.
        let uri = parts
            .extensions
            .get::<OriginalUri>()
            .map_or(&parts.uri, |original| &original.0);
        Ok(Head {
            method: parts.method.clone(),
            path: uri
                .path_and_query()
                .map_or_else(|| uri.path().to_string(), ToString::to_string),
            authorization: parts.headers.get(header::AUTHORIZATION).cloned(),
            content_type: parts.headers.get(header::CONTENT_TYPE).cloned(),
            client: parts.extensions.get::<ClientHost>().map(|c| c.0),
            forwarded: parts.headers.contains_key(FORWARDED_BY),
        })
    }
}

impl AppState {
    /// The host whose ACL rules a request's caller is checked against: the connection's
    /// `peer`, or, for a request that a live node of the cluster sent on, the host of the
    /// client that node names. A node that sends a request on connects from its own address,
    /// so without this a rule allowing a user from one host only would refuse the user at the
    /// coordinator; and the name is believed only from a live node's address, so a client
    /// cannot forge it.
    pub(super) async fn client_host(&self, headers: &HeaderMap, peer: IpAddr) -> IpAddr {
        if !headers.contains_key(FORWARDED_BY) {
            return peer;
        }
        let Some(named) = headers
            .get(FORWARDED_FOR)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<IpAddr>().ok())
        else {
            return peer;
        };
        for home in self.node.logs.peers_http() {
            if let Ok(mut addrs) = tokio::net::lookup_host(home.as_str()).await
                && addrs.any(|a| a.ip() == peer)
            {
                return named;
            }
        }
        peer
    }

    /// On a cluster, when another node coordinates `group`, that node's answer to this request,
    /// which goes on to it unchanged with `body`. Callers check the caller's ACLs first: this
    /// node sees the caller's address, and the coordinator sees this node's.
    pub(super) async fn at_coordinator(
        &self,
        group: &str,
        head: Head,
        body: Vec<u8>,
    ) -> ApiResult<Option<Response>> {
        let (Some(peers), Some(by)) = (self.peers.clone(), self.node.logs.cluster_node_id()) else {
            return Ok(None);
        };
        if head.forwarded {
            return Ok(None);
        }
        let node = self.node.clone();
        let group = group.to_owned();
        blocking(move || {
            Ok(node
                .logs
                .coordinator_http(&group)
                .map(|home| peers.send(&home, &head, body, by)))
        })
        .await
    }
}
