//! SASL for the Kafka listener: PLAIN (RFC 4616) and SCRAM-SHA-256/512 (RFC 5802, RFC 7677),
//! and the users they authenticate.
//!
//! A user is stored as SCRAM credentials only, one per mechanism: a random salt, an iteration
//! count, and the stored and server keys derived from the password — never the password. PLAIN
//! is checked against the SCRAM-SHA-256 credential by deriving the stored key from the password
//! it carries. An unknown user goes through the same exchange as a known one, with a made-up
//! salt, and fails with the same message as a wrong password.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use subtle::ConstantTimeEq;
use weir_storage::{Bounded, Present, Tree};

/// The mechanisms a client may pick in SaslHandshake.
pub const MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];
/// Iterations of new SCRAM credentials; also the fewest a credential may have (Kafka's
/// minimum).
pub const SCRAM_ITERATIONS_MIN: u32 = 4096;
/// Most iterations a credential may ask for, so a single login cannot take seconds of CPU.
pub const SCRAM_ITERATIONS_MAX: u32 = 16_384;
/// Longest SASL message a client may send.
pub const SASL_MESSAGE_BYTES_MAX: usize = 4096;
/// Longest user name.
pub const USER_NAME_BYTES_MAX: usize = 256;
/// Most users a node keeps.
pub const USERS_MAX: usize = 10_000;
const SALT_BYTES: usize = 32;
const NONCE_BYTES: usize = 24;
pub const USERS_TREE: &str = "users";
/// The message every failed authentication gets, whatever failed.
/// Password checks (SASL PLAIN, HTTP basic authentication, Postgres passwords) that run at once
/// at most. Each derives a key over thousands of rounds on the blocking pool; guesses from many
/// connections wait for a slot here rather than take the pool from storage.
pub const PASSWORD_CHECKS_MAX: usize = 4;
/// How long a failed password check waits before it answers, as Kafka's
/// `connection.failed.authentication.delay.ms`: guessing gets slower, the client still hears why.
pub const FAILED_AUTHENTICATION_DELAY: std::time::Duration = std::time::Duration::from_millis(100);

pub const AUTHENTICATION_FAILED: &str = "authentication failed: invalid user name or password";

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("{0}")]
    Invalid(String),
    #[error("user {0} does not exist")]
    Unknown(String),
    #[error("{USERS_MAX} users exist, the most a node keeps")]
    TooMany,
    #[error(transparent)]
    Storage(#[from] weir_storage::StorageError),
}

/// A SCRAM hash function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scram {
    Sha256,
    Sha512,
}

/// Runs `$body` with `$hash` naming the hash type of `$scram`.
macro_rules! with_hash {
    ($scram:expr, $hash:ident => $body:expr) => {
        match $scram {
            Scram::Sha256 => {
                type $hash = sha2::Sha256;
                $body
            }
            Scram::Sha512 => {
                type $hash = sha2::Sha512;
                $body
            }
        }
    };
}

impl Scram {
    pub const ALL: [Scram; 2] = [Scram::Sha256, Scram::Sha512];

    pub fn name(self) -> &'static str {
        match self {
            Scram::Sha256 => "SCRAM-SHA-256",
            Scram::Sha512 => "SCRAM-SHA-512",
        }
    }

    pub fn named(name: &str) -> Option<Scram> {
        Scram::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Kafka's number for the mechanism (`ScramMechanism` in its APIs).
    pub fn kafka_id(self) -> i8 {
        match self {
            Scram::Sha256 => 1,
            Scram::Sha512 => 2,
        }
    }

    pub fn with_kafka_id(id: i8) -> Option<Scram> {
        Scram::ALL.into_iter().find(|s| s.kafka_id() == id)
    }

    /// Bytes of the hash, and so of a salted password.
    pub fn output_bytes(self) -> usize {
        with_hash!(self, H => <H as Digest>::output_size())
    }

    fn hash(self, data: &[u8]) -> Vec<u8> {
        with_hash!(self, H => H::digest(data).to_vec())
    }

    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        with_hash!(self, H => {
            // HMAC takes a key of any length; the error cannot happen.
            let mut mac = <Hmac<H> as KeyInit>::new_from_slice(key)
                .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        })
    }

    /// `Hi(password, salt, iterations)`: PBKDF2 with this hash's HMAC.
    pub fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        with_hash!(self, H => {
            let mut out = vec![0u8; <H as Digest>::output_size()];
            pbkdf2::pbkdf2_hmac::<H>(password, salt, iterations, &mut out);
            out
        })
    }
}

/// What a node keeps of a password for one SCRAM mechanism.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ScramCredential {
    pub salt: String,
    pub iterations: u32,
    pub stored_key: String,
    pub server_key: String,
}

impl ScramCredential {
    /// The credential of `password` with a fresh random salt.
    pub fn new(
        scram: Scram,
        password: &str,
        iterations: u32,
    ) -> Result<ScramCredential, UserError> {
        let salt = random_bytes(SALT_BYTES)?;
        let salted = scram.salted_password(password.as_bytes(), &salt, iterations);
        Ok(ScramCredential::from_salted(
            scram, &salted, &salt, iterations,
        ))
    }

    /// The credential of a salted password, as AlterUserScramCredentials sends it.
    pub fn from_salted(scram: Scram, salted: &[u8], salt: &[u8], iterations: u32) -> Self {
        let client_key = scram.hmac(salted, b"Client Key");
        ScramCredential {
            salt: BASE64.encode(salt),
            iterations,
            stored_key: BASE64.encode(scram.hash(&client_key)),
            server_key: BASE64.encode(scram.hmac(salted, b"Server Key")),
        }
    }

    fn decoded(&self) -> Option<(Vec<u8>, Vec<u8>, Vec<u8>)> {
        Some((
            BASE64.decode(&self.salt).ok()?,
            BASE64.decode(&self.stored_key).ok()?,
            BASE64.decode(&self.server_key).ok()?,
        ))
    }
}

/// A user's credentials, by mechanism name.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UserCredentials {
    pub scram: BTreeMap<String, ScramCredential>,
}

/// The users of a node, in the metadata store.
pub struct Users {
    tree: Tree<UserCredentials>,
    /// Random per process: keys the made-up salts of unknown users, so they are stable for a
    /// name (as a real user's are) but cannot be computed from it.
    decoy_key: Vec<u8>,
    /// Slots of the password checks running now ([`PASSWORD_CHECKS_MAX`]).
    checks: tokio::sync::Semaphore,
}

impl Users {
    /// The users of `tree`: the node's [`USERS_TREE`], or the cluster's.
    pub fn open(tree: Tree<UserCredentials>) -> Result<Users, UserError> {
        Ok(Users {
            tree,
            decoy_key: random_bytes(SALT_BYTES)?,
            checks: tokio::sync::Semaphore::new(PASSWORD_CHECKS_MAX),
        })
    }

    /// Runs `f`, which may check a password, on the blocking pool once a check slot is free.
    pub async fn on_blocking_pool<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Users) -> T + Send + 'static,
    ) -> Result<T, tokio::task::JoinError> {
        let _slot = self.checks.acquire().await;
        let users = self.clone();
        tokio::task::spawn_blocking(move || weir_storage::reactor::blocking(|| f(&users))).await
    }

    /// Checks `user`'s password off the reactor; a wrong one answers after
    /// [`FAILED_AUTHENTICATION_DELAY`]. The error is the reason, for the log only.
    pub async fn check_password(
        self: &Arc<Self>,
        user: &str,
        password: String,
    ) -> Result<(), String> {
        let name = user.to_owned();
        let checked = self
            .on_blocking_pool(move |users| users.verify_password(&name, password.as_bytes()))
            .await
            .unwrap_or_else(|e| Err(format!("the password check failed: {e}")));
        if checked.is_err() {
            tokio::time::sleep(FAILED_AUTHENTICATION_DELAY).await;
        }
        checked
    }

    /// Password checks running now.
    pub fn checks_running(&self) -> usize {
        PASSWORD_CHECKS_MAX - self.checks.available_permits()
    }

    /// Creates `name`, or gives it a new password, with credentials for both SCRAM hashes.
    pub fn set_password(&self, name: &str, password: &str) -> Result<(), UserError> {
        check_user_name(name)?;
        if password.is_empty() || password.len() > SASL_MESSAGE_BYTES_MAX / 2 {
            return Err(UserError::Invalid(format!(
                "a password has 1 to {} bytes",
                SASL_MESSAGE_BYTES_MAX / 2
            )));
        }
        let mut credentials = UserCredentials::default();
        for scram in Scram::ALL {
            let credential = ScramCredential::new(scram, password, SCRAM_ITERATIONS_MIN)?;
            credentials.scram.insert(scram.name().into(), credential);
        }
        self.put(name, credentials)
    }

    /// Sets one mechanism's credential of `name`, creating the user when it is new.
    pub fn set_credential(
        &self,
        name: &str,
        scram: Scram,
        credential: ScramCredential,
    ) -> Result<(), UserError> {
        check_user_name(name)?;
        if !(SCRAM_ITERATIONS_MIN..=SCRAM_ITERATIONS_MAX).contains(&credential.iterations) {
            return Err(UserError::Invalid(format!(
                "iterations must be {SCRAM_ITERATIONS_MIN} to {SCRAM_ITERATIONS_MAX}, not {}",
                credential.iterations
            )));
        }
        let mut credentials = self.tree.get(name)?.unwrap_or_default();
        credentials.scram.insert(scram.name().into(), credential);
        self.put(name, credentials)
    }

    /// Removes one mechanism's credential of `name`; the user goes when it has none left.
    pub fn remove_credential(&self, name: &str, scram: Scram) -> Result<(), UserError> {
        let mut credentials = self
            .tree
            .get(name)?
            .ok_or_else(|| UserError::Unknown(name.into()))?;
        if credentials.scram.remove(scram.name()).is_none() {
            return Err(UserError::Unknown(format!("{name} ({})", scram.name())));
        }
        if credentials.scram.is_empty() {
            self.tree.remove(name)?;
            return Ok(());
        }
        self.tree.insert(name, &credentials)?;
        Ok(())
    }

    fn put(&self, name: &str, credentials: UserCredentials) -> Result<(), UserError> {
        let entry = [(name.to_string(), &credentials)];
        if let Bounded::Full { .. } = self
            .tree
            .insert_within(entry, USERS_MAX, Present::Replace)?
        {
            return Err(UserError::TooMany);
        }
        Ok(())
    }

    /// How many users exist.
    pub fn count(&self) -> Result<usize, UserError> {
        Ok(self.tree.count()?)
    }

    pub fn delete(&self, name: &str) -> Result<(), UserError> {
        if !self.tree.remove(name)? {
            return Err(UserError::Unknown(name.into()));
        }
        Ok(())
    }

    /// Every user with the mechanisms it has credentials for.
    pub fn list(&self) -> Result<Vec<(String, UserCredentials)>, UserError> {
        Ok(self.tree.all()?)
    }

    pub fn get(&self, name: &str) -> Result<Option<UserCredentials>, UserError> {
        Ok(self.tree.get(name)?)
    }

    fn credential(&self, name: &str, scram: Scram) -> Option<ScramCredential> {
        self.tree.get(name).ok()??.scram.remove(scram.name())
    }
}

fn check_user_name(name: &str) -> Result<(), UserError> {
    if name.is_empty() || name.len() > USER_NAME_BYTES_MAX || name.chars().any(char::is_control) {
        return Err(UserError::Invalid(format!(
            "a user name has 1 to {USER_NAME_BYTES_MAX} bytes and no control characters"
        )));
    }
    Ok(())
}

fn random_bytes(n: usize) -> Result<Vec<u8>, UserError> {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes)
        .map_err(|e| UserError::Invalid(format!("no randomness from the system: {e}")))?;
    Ok(bytes)
}

/// What one step of an exchange answers.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send these bytes and wait for the client's next message.
    Continue(Vec<u8>),
    /// The client is `user`; send these bytes.
    Done { user: String, response: Vec<u8> },
    /// Refuse with [`AUTHENTICATION_FAILED`] and close; the reason is for the log only.
    Failed(String),
}

/// One connection's authentication, from SaslHandshake to the last SaslAuthenticate.
pub struct Exchange {
    mechanism: Mechanism,
    state: State,
}

#[derive(Clone, Copy)]
enum Mechanism {
    Plain,
    Scram(Scram),
}

enum State {
    Start,
    ScramFirstAnswered {
        user: String,
        /// `None` for an unknown user, who fails at the next step.
        credential: Option<(Vec<u8>, Vec<u8>)>,
        gs2_header: String,
        nonce: String,
        /// client-first-message-bare "," server-first-message
        auth_prefix: String,
    },
    Finished,
}

impl Exchange {
    /// The exchange of `mechanism`, or `None` when this node does not offer it.
    pub fn new(mechanism: &str) -> Option<Exchange> {
        let mechanism = match mechanism {
            "PLAIN" => Mechanism::Plain,
            name => Mechanism::Scram(Scram::named(name)?),
        };
        Some(Exchange {
            mechanism,
            state: State::Start,
        })
    }

    /// Takes the client's next message.
    pub fn step(&mut self, users: &Users, message: &[u8]) -> Step {
        if message.len() > SASL_MESSAGE_BYTES_MAX {
            return Step::Failed(format!(
                "SASL message of {} bytes; the limit is {SASL_MESSAGE_BYTES_MAX}",
                message.len()
            ));
        }
        let state = std::mem::replace(&mut self.state, State::Finished);
        match (self.mechanism, state) {
            (Mechanism::Plain, State::Start) => plain(users, message),
            (Mechanism::Scram(scram), State::Start) => {
                match self.scram_first(users, scram, message) {
                    Ok((state, response)) => {
                        self.state = state;
                        Step::Continue(response)
                    }
                    Err(reason) => Step::Failed(reason),
                }
            }
            (Mechanism::Scram(scram), state @ State::ScramFirstAnswered { .. }) => {
                scram_final(scram, state, message)
            }
            _ => Step::Failed("SASL message after the exchange ended".into()),
        }
    }

    fn scram_first(
        &self,
        users: &Users,
        scram: Scram,
        message: &[u8],
    ) -> Result<(State, Vec<u8>), String> {
        let text = std::str::from_utf8(message).map_err(|_| "client-first-message is not UTF-8")?;
        // gs2-header: no channel binding ("n" or "y"), an optional authzid.
        let (binding, rest) = text
            .split_once(',')
            .ok_or("client-first-message has no gs2 header")?;
        let (_authzid, bare) = rest
            .split_once(',')
            .ok_or("client-first-message has no gs2 header")?;
        if binding != "n" && binding != "y" {
            return Err(format!("channel binding {binding:?} is not supported"));
        }
        let gs2_header = &text[..text.len() - bare.len()];
        let mut user = None;
        let mut client_nonce = None;
        for attribute in bare.split(',') {
            match attribute.split_once('=') {
                Some(("n", name)) => user = Some(sasl_name(name)?),
                Some(("r", nonce)) => client_nonce = Some(nonce),
                Some(("m", _)) => return Err("mandatory SCRAM extension not supported".into()),
                _ => {}
            }
        }
        let user = user.ok_or("client-first-message names no user")?;
        let client_nonce = client_nonce
            .filter(|n| !n.is_empty())
            .ok_or("client-first-message has no nonce")?;
        let credential = users.credential(&user, scram).and_then(|c| {
            let (salt, stored, server) = c.decoded()?;
            Some((c.iterations, salt, stored, server))
        });
        let (iterations, salt, keys) = match credential {
            Some((iterations, salt, stored, server)) => (iterations, salt, Some((stored, server))),
            // An unknown user gets a salt like any other and fails at the proof.
            None => (
                SCRAM_ITERATIONS_MIN,
                Scram::Sha256.hmac(&users.decoy_key, user.as_bytes()),
                None,
            ),
        };
        // Hex: some clients mishandle `+`, `/` and `=` in a nonce.
        let server_nonce: String = random_bytes(NONCE_BYTES)
            .map_err(|e| e.to_string())?
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!("r={nonce},s={},i={iterations}", BASE64.encode(&salt));
        let state = State::ScramFirstAnswered {
            user,
            credential: keys,
            gs2_header: gs2_header.to_string(),
            nonce,
            auth_prefix: format!("{bare},{server_first}"),
        };
        Ok((state, server_first.into_bytes()))
    }
}

/// PLAIN: `authzid NUL authcid NUL password`, checked against the SCRAM-SHA-256 credential.
fn plain(users: &Users, message: &[u8]) -> Step {
    let mut parts = message.split(|b| *b == 0);
    let (Some(authzid), Some(user), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Step::Failed("PLAIN message is not authzid NUL user NUL password".into());
    };
    let Ok(user) = std::str::from_utf8(user) else {
        return Step::Failed("PLAIN user name is not UTF-8".into());
    };
    if !authzid.is_empty() && authzid != user.as_bytes() {
        return Step::Failed(format!("user {user} may not act as another user"));
    }
    match users.verify_password(user, password) {
        Ok(()) => Step::Done {
            user: user.to_string(),
            response: Vec::new(),
        },
        Err(reason) => Step::Failed(reason),
    }
}

impl Users {
    /// Checks a password against the user's SCRAM-SHA-256 credential, in the same time for an
    /// unknown user as for a known one; the error is the reason, for the log only.
    pub fn verify_password(&self, user: &str, password: &[u8]) -> Result<(), String> {
        let scram = Scram::Sha256;
        let credential = self.credential(user, scram);
        let keys = credential
            .as_ref()
            .and_then(|c| Some((c.iterations, c.decoded()?)));
        let (iterations, salt, stored) = match keys {
            Some((iterations, (salt, stored, _))) => (iterations, salt, Some(stored)),
            None => (SCRAM_ITERATIONS_MIN, user.as_bytes().to_vec(), None),
        };
        let salted = scram.salted_password(password, &salt, iterations);
        let Some(stored) = stored else {
            return Err(format!("user {user} unknown"));
        };
        let client_key = scram.hmac(&salted, b"Client Key");
        if bool::from(scram.hash(&client_key).ct_eq(&stored)) {
            Ok(())
        } else {
            Err(format!("wrong password for user {user}"))
        }
    }
}

/// SCRAM's client-final-message: check the binding, the nonce and the proof; answer the
/// server signature.
fn scram_final(scram: Scram, state: State, message: &[u8]) -> Step {
    let State::ScramFirstAnswered {
        user,
        credential,
        gs2_header,
        nonce,
        auth_prefix,
    } = state
    else {
        return Step::Failed("SCRAM final message out of order".into());
    };
    let Ok(text) = std::str::from_utf8(message) else {
        return Step::Failed("client-final-message is not UTF-8".into());
    };
    let Some((without_proof, proof)) = text.rsplit_once(",p=") else {
        return Step::Failed("client-final-message has no proof".into());
    };
    let mut binding = None;
    let mut final_nonce = None;
    for attribute in without_proof.split(',') {
        match attribute.split_once('=') {
            Some(("c", c)) => binding = Some(c),
            Some(("r", r)) => final_nonce = Some(r),
            _ => {}
        }
    }
    if binding != Some(BASE64.encode(gs2_header.as_bytes()).as_str()) {
        return Step::Failed("client-final-message's channel binding differs".into());
    }
    // librdkafka sends its own nonce again in front of the combined one; Kafka accepts that by
    // checking only the end, and so does this.
    if !final_nonce.is_some_and(|n| n.ends_with(nonce.as_str())) {
        return Step::Failed("client-final-message's nonce differs from the server's".into());
    }
    let Some((stored_key, server_key)) = credential else {
        return Step::Failed(format!("user {user} unknown"));
    };
    let Ok(proof) = BASE64.decode(proof) else {
        return Step::Failed("client proof is not base64".into());
    };
    let auth_message = format!("{auth_prefix},{without_proof}");
    let signature = scram.hmac(&stored_key, auth_message.as_bytes());
    if proof.len() != signature.len() {
        return Step::Failed(format!("wrong password for user {user}"));
    }
    let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(p, s)| p ^ s).collect();
    if !bool::from(scram.hash(&client_key).ct_eq(&stored_key)) {
        return Step::Failed(format!("wrong password for user {user}"));
    }
    let server_signature = scram.hmac(&server_key, auth_message.as_bytes());
    Step::Done {
        user,
        response: format!("v={}", BASE64.encode(server_signature)).into_bytes(),
    }
}

/// A saslname with `=2C` and `=3D` decoded; any other `=` is refused.
fn sasl_name(name: &str) -> Result<String, String> {
    let mut decoded = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find('=') {
        decoded.push_str(&rest[..at]);
        let escape = rest.get(at..at + 3);
        match escape {
            Some("=2C") => decoded.push(','),
            Some("=3D") => decoded.push('='),
            _ => return Err(format!("user name {name:?} is not a valid saslname")),
        }
        rest = &rest[at + 3..];
    }
    decoded.push_str(rest);
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

    use super::*;

    fn users() -> (tempfile::TempDir, Users) {
        let dir = tempfile::tempdir().unwrap();
        let meta = weir_storage::MetaStore::open(&dir.path().join("meta")).unwrap();
        let users = Users::open(meta.tree(USERS_TREE).unwrap()).unwrap();
        users.set_password("alice", "wonder land").unwrap();
        (dir, users)
    }

    /// A SCRAM client as RFC 5802 describes it; answers the server's final step.
    fn scram_login(users: &Users, scram: Scram, user: &str, password: &str) -> Step {
        let mut exchange = Exchange::new(scram.name()).unwrap();
        let client_first_bare = format!("n={user},r=clientnonce123");
        let Step::Continue(server_first) =
            exchange.step(users, format!("n,,{client_first_bare}").as_bytes())
        else {
            panic!("the first step continues");
        };
        let server_first = String::from_utf8(server_first).unwrap();
        let mut fields = server_first.split(',');
        let nonce = fields.next().unwrap().strip_prefix("r=").unwrap();
        let salt = BASE64
            .decode(fields.next().unwrap().strip_prefix("s=").unwrap())
            .unwrap();
        let iterations: u32 = fields
            .next()
            .unwrap()
            .strip_prefix("i=")
            .unwrap()
            .parse()
            .unwrap();
        assert!(nonce.starts_with("clientnonce123") && nonce.len() > 20);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let salted = scram.salted_password(password.as_bytes(), &salt, iterations);
        let client_key = scram.hmac(&salted, b"Client Key");
        let signature = scram.hmac(&scram.hash(&client_key), auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let step = exchange.step(
            users,
            format!("{without_proof},p={}", BASE64.encode(proof)).as_bytes(),
        );
        if let Step::Done { response, .. } = &step {
            let server_key = scram.hmac(&salted, b"Server Key");
            let expected = scram.hmac(&server_key, auth_message.as_bytes());
            assert_eq!(
                response,
                &format!("v={}", BASE64.encode(expected)).into_bytes()
            );
        }
        step
    }

    #[test]
    fn scram_logs_in_with_the_right_password_for_both_hashes() {
        let (_dir, users) = users();
        for scram in Scram::ALL {
            assert!(
                matches!(scram_login(&users, scram, "alice", "wonder land"), Step::Done { user, .. } if user == "alice"),
                "{scram:?}"
            );
        }
    }

    #[test]
    fn scram_refuses_a_wrong_password_and_an_unknown_user_alike() {
        let (_dir, users) = users();
        for scram in Scram::ALL {
            assert!(matches!(
                scram_login(&users, scram, "alice", "wonderland"),
                Step::Failed(_)
            ));
            assert!(matches!(
                scram_login(&users, scram, "mallory", "x"),
                Step::Failed(_)
            ));
        }
    }

    /// The salt the server's first message gives `user`.
    fn salt_for(users: &Users, user: &str) -> String {
        let mut exchange = Exchange::new("SCRAM-SHA-256").unwrap();
        let Step::Continue(first) = exchange.step(users, format!("n,,n={user},r=abc").as_bytes())
        else {
            panic!("the first step continues");
        };
        let first = String::from_utf8(first).unwrap();
        first.split(',').nth(1).unwrap().to_string()
    }

    #[test]
    fn an_unknown_user_gets_a_steady_salt_that_its_name_does_not_give_away() {
        let (_dir, users) = users();
        assert_eq!(salt_for(&users, "mallory"), salt_for(&users, "mallory"));
        assert_ne!(salt_for(&users, "mallory"), salt_for(&users, "trudy"));
        let from_name = BASE64.encode(Scram::Sha256.hash(b"mallory"));
        assert_ne!(salt_for(&users, "mallory"), format!("s={from_name}"));
        assert_eq!(salt_for(&users, "alice"), salt_for(&users, "alice"));
    }

    #[test]
    fn plain_logs_in_only_with_the_right_password() {
        let (_dir, users) = users();
        let login = |message: &[u8]| Exchange::new("PLAIN").unwrap().step(&users, message);
        assert!(
            matches!(login(b"\0alice\0wonder land"), Step::Done { user, .. } if user == "alice")
        );
        assert!(matches!(
            login(b"alice\0alice\0wonder land"),
            Step::Done { .. }
        ));
        assert!(matches!(login(b"\0alice\0wonderland"), Step::Failed(_)));
        assert!(matches!(login(b"\0bob\0wonder land"), Step::Failed(_)));
        assert!(matches!(login(b"bob\0alice\0wonder land"), Step::Failed(_)));
        assert!(matches!(login(b"alice wonder land"), Step::Failed(_)));
    }

    /// RFC 7677's example: user "user", password "pencil"; the proof it gives verifies
    /// against the credential derived here.
    #[test]
    fn the_rfc_7677_example_verifies() {
        let scram = Scram::Sha256;
        let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let salted = scram.salted_password(b"pencil", &salt, 4096);
        let credential = ScramCredential::from_salted(scram, &salted, &salt, 4096);
        let auth_message = "n=user,r=rOprNGfwEbeRWgbNEkqO,\
            r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,\
            c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let proof = BASE64
            .decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
            .unwrap();
        let (_, stored, server) = credential.decoded().unwrap();
        let signature = scram.hmac(&stored, auth_message.as_bytes());
        let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(p, s)| p ^ s).collect();
        assert_eq!(scram.hash(&client_key), stored);
        assert_eq!(
            BASE64.encode(scram.hmac(&server, auth_message.as_bytes())),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    #[test]
    fn passwords_are_never_stored() {
        let (dir, users) = users();
        drop(users);
        let mut found = false;
        for entry in walk(dir.path()) {
            let bytes = std::fs::read(entry).unwrap();
            found |= bytes.windows(11).any(|w| w == b"wonder land");
        }
        assert!(!found, "the password is in the metadata store");
    }

    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files.extend(walk(&path));
            } else {
                files.push(path);
            }
        }
        files
    }

    #[test]
    fn messages_names_and_iterations_past_their_bounds_are_refused() {
        let (_dir, users) = users();
        let long = vec![b'a'; SASL_MESSAGE_BYTES_MAX + 1];
        let step = Exchange::new("PLAIN").unwrap().step(&users, &long);
        assert!(matches!(step, Step::Failed(reason) if reason.contains("limit")));
        let name = "n".repeat(USER_NAME_BYTES_MAX + 1);
        assert!(matches!(
            users.set_password(&name, "pw"),
            Err(UserError::Invalid(_))
        ));
        let salted = Scram::Sha256.salted_password(b"pw", b"salt", SCRAM_ITERATIONS_MIN);
        for iterations in [SCRAM_ITERATIONS_MIN - 1, SCRAM_ITERATIONS_MAX + 1] {
            let credential =
                ScramCredential::from_salted(Scram::Sha256, &salted, b"salt", iterations);
            let set = users.set_credential("bob", Scram::Sha256, credential);
            assert!(matches!(set, Err(UserError::Invalid(_))), "{iterations}");
        }
        assert_eq!(users.count().unwrap(), 1);
    }

    #[test]
    fn sasl_names_decode_their_escapes_and_refuse_others() {
        assert_eq!(sasl_name("a=2Cb=3Dc").unwrap(), "a,b=c");
        assert!(sasl_name("a=b").is_err());
        assert!(sasl_name("a=").is_err());
    }
}
