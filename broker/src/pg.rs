//! The Postgres wire listener: `psql`, Grafana's Postgres data source and any Postgres driver
//! query topics over the simple and the extended query protocol.
//!
//! Statements run on the node's one SQL session ([`weir_sql::QueryEngine`]), with `pg_catalog`
//! and `information_schema` for the clients' catalog queries. What reaches the session is
//! checked first: queries, `INSERT`, `EXPLAIN`, cursors and transactions pass; `CREATE TABLE …
//! AS SELECT` makes a topic through the engine; `SET` of a connection's own settings is kept
//! for the connection and any other `SET` is answered and ignored, so one client cannot change
//! the session of the others; every other statement is refused with the reason. With an admin
//! token the listener asks for a password: the token, or (over TLS) a SASL user's, whose
//! statements are then checked against its ACLs table by table. The password travels in clear
//! text unless TLS is on: keep a plain listener on loopback or a trusted network. With TLS on,
//! clients must ask for it (`sslmode=require` or stricter).

use std::borrow::Cow;
use std::fmt::Debug;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::UInt64Type;
use datafusion::common::{DFSchema, ParamValues};
use datafusion::logical_expr::{EmptyRelation, LogicalPlan};
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{Set, Statement};
use datafusion_postgres::hooks::cursor::CursorStatementHook;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::hooks::{HookClient, QueryHook};
use datafusion_postgres::pgwire;
use datafusion_postgres::pgwire::tokio::TlsAcceptor;
use datafusion_postgres::{DfSessionService, Parser};
use futures::{Sink, SinkExt};
use pgwire::api::auth::{
    DefaultServerParameterProvider, StartupHandler, finish_authentication, protocol_negotiation,
    save_startup_parameters_to_metadata,
};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldInfo, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{
    ClientInfo, ClientPortalStore, PgWireConnectionState, PgWireServerHandlers,
    PidSecretKeyGenerator, RandomPidSecretKeyGenerator, Type,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::startup::Authentication;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use tokio::io::Interest;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use weir_sql::{QueryEngine, Viewer};

use crate::acl::Caller;
use crate::metrics::{Connection, Protocol};
use crate::node::NodeContext;

/// Accepts Postgres connections until shutdown.
pub async fn serve(
    listener: TcpListener,
    node: NodeContext,
    token: Option<String>,
    tls: Option<crate::tls::Tls>,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = tls.map(|tls| tls.acceptor(&[b"postgresql"]));
    let limits = node.limits.clone();
    let metrics = node.metrics.clone();
    let shared = Shared {
        engine: node.sql.clone(),
        callers: Arc::new(Callers {
            acls: node.acls.clone(),
            super_users: node.super_users.clone(),
        }),
        token,
        tls_required: acceptor.is_some(),
        users: node.users.clone(),
    };
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let Some(slot) = limits.pg_connection() else {
                        metrics.pg_connection_refused();
                        tracing::debug!(%peer, max = crate::limits::PG_CONNECTIONS_MAX, "Postgres connection refused: the node holds its limit of connections");
                        metrics.answer_refusal(refuse_over_limit(socket));
                        continue;
                    };
                    let _ = socket.set_nodelay(true);
                    let open = metrics.connection(Protocol::Postgres, peer);
                    let handlers = Arc::new(Handlers::new(&shared, open));
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        connection(socket, peer, acceptor, handlers).await;
                        drop(slot);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a Postgres connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
}

/// Tells a client past [`crate::limits::PG_CONNECTIONS_MAX`] why, as Postgres does: its
/// startup message is read (a request for TLS or GSS encryption is declined first, so the
/// answer comes in clear text that libpq shows), then SQLSTATE 53300 is sent and the connection
/// closed. A client gets [`REFUSAL_TIMEOUT`] for all of it.
async fn refuse_over_limit(mut socket: TcpStream) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let refuse = async {
        loop {
            let length = socket.read_u32().await? as usize;
            if !(8..=STARTUP_BYTES_MAX).contains(&length) {
                return Ok(());
            }
            let mut body = vec![0; length - 4];
            socket.read_exact(&mut body).await?;
            let code = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
            if code != SSL_REQUEST && code != GSSENC_REQUEST {
                break;
            }
            socket.write_all(b"N").await?;
        }
        let message = format!(
            "too many Postgres connections: this node serves {} at once",
            crate::limits::PG_CONNECTIONS_MAX
        );
        let mut fields = Vec::new();
        for (code, value) in [
            (b'S', "FATAL"),
            (b'V', "FATAL"),
            (b'C', "53300"),
            (b'M', &message),
        ] {
            fields.push(code);
            fields.extend_from_slice(value.as_bytes());
            fields.push(0);
        }
        fields.push(0);
        let mut frame = vec![b'E'];
        frame.extend_from_slice(&(fields.len() as u32 + 4).to_be_bytes());
        frame.extend_from_slice(&fields);
        socket.write_all(&frame).await?;
        socket.shutdown().await
    };
    let _ = tokio::time::timeout(REFUSAL_TIMEOUT, refuse).await;
}

/// How long a refused client has to send its startup message.
const REFUSAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// The largest startup message read from a refused client.
const STARTUP_BYTES_MAX: usize = 10_000;
/// The codes of a startup packet asking for TLS and for GSS encryption.
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;

/// Serves one client. A statement runs inside the connection's future, so when the client goes
/// away (its socket hangs up) the future is dropped and the statement with it: a runaway query
/// does not keep a core busy for a client that is gone.
async fn connection(
    socket: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    handlers: Arc<Handlers>,
) {
    let (socket, hangup) = match watch_hangup(socket) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "Postgres connection refused: its socket could not be watched");
            return;
        }
    };
    tokio::select! {
        // A connection that ends by itself ends here, even when its hang-up is seen too.
        biased;
        served = pgwire::tokio::process_socket(socket, tls, handlers) => {
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "Postgres connection ended");
            }
        }
        () = hangup => tracing::info!(%peer, "Postgres client hung up; its statement, if any, is cancelled"),
    }
}

/// The socket, and a future that ends when its peer hangs up. The future watches a second
/// descriptor of the same socket and never reads from it; the protocol reads the first.
fn watch_hangup(socket: TcpStream) -> std::io::Result<(TcpStream, impl Future<Output = ()>)> {
    let socket = socket.into_std()?;
    let watched = TcpStream::from_std(socket.try_clone()?)?;
    let socket = TcpStream::from_std(socket)?;
    let hangup = async move {
        loop {
            match watched.ready(Interest::READABLE).await {
                Ok(ready) if ready.is_read_closed() => return,
                Ok(_) => {
                    // Bytes of the next request: not ours to read. Clear the readiness so the
                    // next wake-up is a new event, not the same bytes again.
                    let _ = watched.try_io(Interest::READABLE, || {
                        Err::<(), _>(std::io::ErrorKind::WouldBlock.into())
                    });
                }
                Err(_) => return,
            }
        }
    };
    Ok((socket, hangup))
}

/// What every connection of the listener shares.
struct Shared {
    engine: Arc<QueryEngine>,
    callers: Arc<Callers>,
    token: Option<String>,
    tls_required: bool,
    users: Arc<crate::sasl::Users>,
}

/// One connection's handlers. Each connection has its own copy of the node's SQL session
/// state, whose [`Viewer`] is the SASL user the client signs in as, so the system tables show
/// that user its own rows; catalogs, functions and the memory pool are the node's.
struct Handlers {
    session: Arc<Session>,
    startup: Arc<Startup>,
}

impl Handlers {
    /// The handlers of one connection, listed in `weir.connections` while they live.
    fn new(shared: &Shared, connection: Connection) -> Handlers {
        let viewer = Arc::new(Viewer::default());
        let mut state = shared.engine.context().state();
        state.config_mut().set_extension(viewer.clone());
        let context = Arc::new(SessionContext::new_with_state(state));
        let hooks: Vec<Arc<dyn QueryHook>> = vec![
            Arc::new(Guard {
                engine: shared.engine.clone(),
                callers: shared.callers.clone(),
            }),
            Arc::new(CursorStatementHook),
            Arc::new(SetShowHook),
            Arc::new(TransactionStatementHook),
        ];
        let inner = DfSessionService::new_with_hooks(context, hooks);
        Handlers {
            session: Arc::new(Session {
                parser: Arc::new(Rewriting(inner.query_parser())),
                inner,
                connection,
                engine: shared.engine.clone(),
                callers: shared.callers.clone(),
            }),
            startup: Arc::new(Startup {
                token: shared.token.clone(),
                tls_required: shared.tls_required,
                users: shared.users.clone(),
                callers: shared.callers.clone(),
                viewer,
                parameters: DefaultServerParameterProvider::default(),
                keys: RandomPidSecretKeyGenerator::default(),
            }),
        }
    }
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.session.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.session.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }
}

/// Grafana's `$__schemaConstraint`: the schemas on the search path, read with
/// `generate_series` over array bounds in `FROM`, which the engine cannot plan.
static SEARCH_PATH_SCHEMAS: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(
        r#"(?is)SELECT\s+CASE\s+WHEN\s+trim\s*\(\s*s\s*\[\s*i\s*\]\s*\)\s*=\s*'"\$user"'\s+THEN\s+user\s+ELSE\s+trim\s*\(\s*s\s*\[\s*i\s*\]\s*\)\s+END\s+FROM\s+generate_series\s*\(.*?\)\s+as\s+i\s*,\s*string_to_array\s*\(\s*current_setting\s*\(\s*'search_path'\s*\)\s*,\s*','\s*\)\s+s"#,
    )
    .expect("a valid pattern")
});

/// Client queries the engine cannot plan, written as ones it can: the search path is `public`.
/// Text that chains too many operators to parse safely is refused before this.
fn rewrite(sql: &str) -> Cow<'_, str> {
    SEARCH_PATH_SCHEMAS.replace_all(sql, "SELECT 'public'")
}

/// The session service with [`rewrite`] applied to the text of every statement.
struct Session {
    inner: DfSessionService,
    parser: Arc<Rewriting>,
    connection: Connection,
    engine: Arc<QueryEngine>,
    callers: Arc<Callers>,
}

impl Session {
    /// Counts a statement of the connection, by the application name the client gave.
    fn counted(&self, client: &dyn ClientInfo) {
        let name = client
            .metadata()
            .get("application_name")
            .map(String::as_str);
        self.connection.request(name);
    }

    /// Runs a pipeline statement (`CREATE PIPELINE`, `SHOW PIPELINES`, …), which the session's
    /// parser does not know, through the engine for the signed-in caller.
    async fn pipeline_statement(&self, caller: Caller, query: &str) -> PgWireResult<Vec<Response>> {
        let answer = self
            .engine
            .sql_as(query, caller.table_access())
            .await
            .map_err(|e| {
                PgWireError::UserError(Box::new(ErrorInfo::new(
                    "ERROR".to_owned(),
                    "42000".to_owned(),
                    e.to_string(),
                )))
            })?;
        use datafusion_postgres::arrow_pg::datatypes as pg_types;
        let fields = Arc::new(pg_types::arrow_schema_to_pg_fields(
            &answer.schema,
            &pgwire::api::portal::Format::UnifiedText,
            None,
        )?);
        let mut rows = Vec::new();
        for batch in answer.batches {
            rows.extend(pg_types::encode_recordbatch(fields.clone(), batch));
        }
        Ok(vec![Response::Query(
            pgwire::api::results::QueryResponse::new(fields, futures::stream::iter(rows)),
        )])
    }
}

#[async_trait]
impl SimpleQueryHandler for Session {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self.counted(client);
        weir_sql::guard::check_text(query).map_err(|e| refused(e.to_string()))?;
        if weir_sql::stream::statement::parse(query).is_ok_and(|s| s.is_some()) {
            let caller = self.callers.of(client);
            return self.pipeline_statement(caller, query).await;
        }
        SimpleQueryHandler::do_query(&self.inner, client, &rewrite(query)).await
    }
}

#[async_trait]
impl ExtendedQueryHandler for Session {
    type Statement = <DfSessionService as ExtendedQueryHandler>::Statement;
    type QueryParser = Rewriting;

    fn query_parser(&self) -> Arc<Rewriting> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self.counted(client);
        ExtendedQueryHandler::do_query(&self.inner, client, portal, max_rows).await
    }
}

/// The session's parser with [`rewrite`] applied first.
struct Rewriting(Arc<Parser>);

#[async_trait]
impl QueryParser for Rewriting {
    type Statement = <Parser as QueryParser>::Statement;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<Self::Statement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        weir_sql::guard::check_text(sql).map_err(|e| refused(e.to_string()))?;
        self.0.parse_sql(client, &rewrite(sql), types).await
    }

    fn get_parameter_types(&self, statement: &Self::Statement) -> PgWireResult<Vec<Type>> {
        self.0.get_parameter_types(statement)
    }

    fn get_result_schema(
        &self,
        statement: &Self::Statement,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        self.0.get_result_schema(statement, format)
    }
}

/// Trust without a token; with one, a cleartext password that must equal it. With TLS on, a
/// client that did not ask for it is refused before anything else.
struct Startup {
    token: Option<String>,
    tls_required: bool,
    /// SASL users sign in with their password too, over TLS.
    users: Arc<crate::sasl::Users>,
    callers: Arc<Callers>,
    /// The connection's viewer, set when a SASL user signs in.
    viewer: Arc<Viewer>,
    parameters: DefaultServerParameterProvider,
    keys: RandomPidSecretKeyGenerator,
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                if self.tls_required && !client.is_secure() {
                    return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                        "FATAL".to_owned(),
                        "28000".to_owned(),
                        "this node accepts TLS connections only: connect with sslmode=require \
                         or verify-full"
                            .to_owned(),
                    ))));
                }
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                let (pid, secret) = self.keys.generate(client);
                client.set_pid_and_secret_key(pid, secret);
                if self.token.is_some() {
                    client.set_state(PgWireConnectionState::AuthenticationInProgress);
                    client
                        .send(PgWireBackendMessage::Authentication(
                            Authentication::CleartextPassword,
                        ))
                        .await?;
                } else {
                    finish_authentication(client, &self.parameters).await?;
                }
            }
            PgWireFrontendMessage::PasswordMessageFamily(password) => {
                let password = password.into_password()?.password;
                let user = client.metadata().get("user").cloned().unwrap_or_default();
                let expected = self.token.as_deref().unwrap_or_default();
                if !crate::auth::token_matches(expected, &password) {
                    // Not the token: a SASL user's password, accepted over TLS only.
                    if !client.is_secure() || !self.user_password(&user, password).await {
                        return Err(PgWireError::InvalidPassword(user));
                    }
                    client.metadata_mut().insert(SASL_USER.to_owned(), user);
                    if let Some(access) = self.callers.of(client).table_access() {
                        self.viewer.set(access);
                    }
                }
                finish_authentication(client, &self.parameters).await?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// The metadata key of a connection that signed in as a SASL user rather than with the token.
const SASL_USER: &str = "weir.sasl_user";

impl Startup {
    /// Whether `password` is `user`'s.
    async fn user_password(&self, user: &str, password: String) -> bool {
        match self.users.check_password(user, password).await {
            Ok(()) => true,
            Err(reason) => {
                tracing::info!(%reason, "Postgres client failed to authenticate");
                false
            }
        }
    }
}

/// What the listener does with one statement.
enum Verdict {
    /// Planned and run by the session (or a hook after this one).
    Pass,
    /// `CREATE TABLE … AS SELECT`, run by the engine.
    CreateAs,
    /// A `SET` of a session setting: answered, not applied.
    Ignore,
    Refuse(String),
}

/// Settings a connection keeps for itself (the `SET`/`SHOW` hook stores them per client).
const CONNECTION_SETTINGS: [&str; 7] = [
    "statement_timeout",
    "datestyle",
    "bytea_output",
    "intervalstyle",
    "application_name",
    "extra_float_digits",
    "search_path",
];

fn verdict(statement: &Statement) -> Verdict {
    if let Err(e) = weir_sql::guard::check_depth(statement) {
        return Verdict::Refuse(e.to_string());
    }
    match statement {
        Statement::Query(_)
        | Statement::Insert(_)
        | Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Declare { .. }
        | Statement::Fetch { .. }
        | Statement::Close { .. }
        | Statement::ShowVariable { .. }
        | Statement::ShowStatus { .. }
        | Statement::ShowTables { .. }
        | Statement::ShowColumns { .. } => Verdict::Pass,
        Statement::Explain { statement, .. } => match verdict(statement) {
            Verdict::Pass => Verdict::Pass,
            _ => Verdict::Refuse(format!("EXPLAIN {statement} is not supported")),
        },
        Statement::Set(Set::SetTimeZone { local: false, .. }) => Verdict::Pass,
        Statement::Set(Set::SingleAssignment {
            scope: None,
            hivevar: false,
            variable,
            ..
        }) if CONNECTION_SETTINGS.contains(&variable.to_string().to_lowercase().as_str()) => {
            Verdict::Pass
        }
        Statement::Set(_) => Verdict::Ignore,
        Statement::CreateTable(create) if create.query.is_some() => Verdict::CreateAs,
        other => {
            let text = other.to_string();
            let words: Vec<&str> = text.split_whitespace().take(2).collect();
            Verdict::Refuse(format!(
                "{} is not allowed: this server runs queries, INSERT INTO a topic and CREATE TABLE … AS SELECT (topics are managed with `weir topic` or the Kafka API)",
                words.join(" ")
            ))
        }
    }
}

fn refused(message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_owned(),
        "42501".to_owned(),
        message,
    )))
}

fn empty_plan() -> LogicalPlan {
    LogicalPlan::EmptyRelation(EmptyRelation {
        produce_one_row: false,
        schema: Arc::new(DFSchema::empty()),
    })
}

/// The node's ACLs and super users, which decide what a connection's statements may do.
struct Callers {
    acls: Arc<crate::acl::Acls>,
    super_users: Arc<[String]>,
}

impl Callers {
    /// Who a connection acts as: a SASL user when it signed in as one, else the token's holder.
    fn of(&self, client: &dyn ClientInfo) -> Caller {
        match client.metadata().get(SASL_USER) {
            Some(user) => Caller::User {
                super_user: self.super_users.contains(user),
                name: user.clone(),
                host: client.socket_addr().ip(),
                acls: self.acls.clone(),
            },
            None => Caller::Anyone,
        }
    }
}

/// Checks every statement before the session sees it (see the module documentation).
struct Guard {
    engine: Arc<QueryEngine>,
    callers: Arc<Callers>,
}

impl Guard {
    fn caller(&self, client: &dyn ClientInfo) -> Caller {
        self.callers.of(client)
    }

    /// Refuses a statement that names a table the caller may not use.
    async fn check_tables(
        &self,
        statement: &Statement,
        session: &SessionContext,
        caller: &Caller,
    ) -> PgWireResult<()> {
        let Some(access) = caller.table_access() else {
            return Ok(());
        };
        let plan = session
            .state()
            .statement_to_plan(DfStatement::Statement(Box::new(statement.clone())))
            .await
            .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
        weir_sql::access::check_plan(&plan, access.as_ref()).map_err(|e| refused(e.to_string()))
    }

    async fn respond(
        &self,
        statement: &Statement,
        session: &SessionContext,
        caller: &Caller,
    ) -> Option<PgWireResult<Response>> {
        match verdict(statement) {
            Verdict::Pass => self
                .check_tables(statement, session, caller)
                .await
                .err()
                .map(Err),
            Verdict::Ignore => {
                tracing::debug!(%statement, "SET of a session setting ignored");
                Some(Ok(Response::Execution(Tag::new("SET"))))
            }
            Verdict::Refuse(message) => Some(Err(refused(message))),
            Verdict::CreateAs => Some(
                match self
                    .engine
                    .sql_as(&statement.to_string(), caller.table_access())
                    .await
                {
                    Ok(answer) => {
                        let rows = answer
                            .batches
                            .first()
                            .and_then(|b| b.column(0).as_primitive_opt::<UInt64Type>())
                            .map_or(0, |counts| counts.value(0));
                        Ok(Response::Execution(
                            Tag::new("SELECT").with_rows(rows as usize),
                        ))
                    }
                    Err(e) => Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                        "ERROR".to_owned(),
                        "42000".to_owned(),
                        e.to_string(),
                    )))),
                },
            ),
        }
    }
}

#[async_trait]
impl QueryHook for Guard {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        session: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        let caller = self.caller(client);
        self.respond(statement, session, &caller).await
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        session: &SessionContext,
        client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        match verdict(statement) {
            Verdict::Pass => {
                let caller = self.caller(client);
                self.check_tables(statement, session, &caller)
                    .await
                    .err()
                    .map(Err)
            }
            Verdict::CreateAs | Verdict::Ignore => Some(Ok(empty_plan())),
            Verdict::Refuse(message) => Some(Err(refused(message))),
        }
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        _plan: &LogicalPlan,
        _params: &ParamValues,
        session: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        let caller = self.caller(client);
        self.respond(statement, session, &caller).await
    }
}
