//! The admin router: flags and layers, inspected and changed by an authorized operator.
//!
//! [`AdminRouter`] builds an `axum::Router` to mount (or serve on an internal port):
//!
//! | method and path | what |
//! |---|---|
//! | `GET /flags` | every flag's definition: `{"flags": {"name": {...}}}` |
//! | `GET /flags/{name}` | one flag's definition |
//! | `PUT /flags/{name}` | create or replace a flag (body: a [`FlagDef`] as JSON) |
//! | `DELETE /flags/{name}` | remove a flag |
//! | `POST /flags/{name}/kill`, `POST /flags/{name}/enable` | the kill switch |
//! | `PUT /flags/{name}/percentage` | body `{"percentage": 20}` |
//! | `GET /layers` | state of the registered breakers, rate limiters and modes |
//! | `POST /breakers/{name}/{action}` | `force_open`, `trip`, `close`, `half_open`, `disable`, `metrics_only`, `reset` |
//! | `PUT /modes/{name}` | body `{"mode": "shadow"}` (`enforce`, `shadow`, `off`) |
//!
//! Every request must pass the authorization check — a bearer token (compared in
//! constant time) or a predicate of yours — or gets `401` with
//! `WWW-Authenticate: Bearer` ([`Event::AdminDenied`]). [`AdminRouter::build`] refuses
//! to build without one. Every change is reported with who made it: flags as
//! [`Event::FlagChanged`] (`by` = the principal), breakers and modes as
//! [`Event::AdminChanged`]. Answers are JSON; errors are `application/problem+json`.
//!
//! ```
//! use tower_parapet::flags::FlagStore;
//! use tower_parapet::http::admin::AdminRouter;
//!
//! let flags = FlagStore::new();
//! let admin: axum::Router = AdminRouter::new()
//!     .flags(flags.clone())
//!     .bearer_token("ops", std::env::var("ADMIN_TOKEN").unwrap_or_else(|_| "a-long-random-secret".into()))
//!     .build()
//!     .expect("an authorization check is configured");
//! // axum::Router::new().nest("/admin", admin) ...
//! # let _ = admin;
//! assert!(AdminRouter::new().flags(flags).build().is_err());
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post, put};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use sha2::{Digest, Sha256};

use crate::circuit_breaker::CircuitBreakerHandle;
use crate::error::ConfigError;
use crate::flags::{FlagDef, FlagError, FlagStore};
use crate::mode::{Mode, ModeHandle};
use crate::observe::{Event, Observer, SharedObserver};
use crate::rate_limit::RateLimitHandle;

/// The shortest bearer token accepted, in bytes.
pub const MIN_TOKEN_LEN: usize = 16;

/// Who made an admin request: the principal the authorization check returned. Handlers
/// of your own nested under the router can extract it with `Extension<Principal>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal(pub String);

type Predicate = Arc<dyn Fn(&HeaderMap) -> Option<String> + Send + Sync>;

#[derive(Clone, Default)]
struct Auth {
    /// `(principal, SHA-256 of the token)`.
    tokens: Vec<(String, [u8; 32])>,
    predicate: Option<Predicate>,
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Equal in time independent of where the inputs differ.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Auth {
    fn principal(&self, headers: &HeaderMap) -> Option<String> {
        if let Some(token) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        {
            // Hashing first makes the comparison independent of the token's length;
            // every configured token is compared, so the position of a match is hidden too.
            let seen = digest(token);
            let mut found = None;
            for (who, expected) in &self.tokens {
                if ct_eq(&seen, expected) && found.is_none() {
                    found = Some(who.clone());
                }
            }
            if found.is_some() {
                return found;
            }
        }
        self.predicate.as_ref().and_then(|p| p(headers))
    }
}

/// Builds the admin router; see the [module docs](self).
#[derive(Clone)]
pub struct AdminRouter {
    name: Arc<str>,
    flags: Option<FlagStore>,
    breakers: BTreeMap<String, CircuitBreakerHandle>,
    limiters: BTreeMap<String, RateLimitHandle>,
    modes: BTreeMap<String, ModeHandle>,
    auth: Auth,
    bad_token: Option<ConfigError>,
    observer: SharedObserver,
}

impl fmt::Debug for AdminRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminRouter")
            .field("name", &self.name)
            .field("flags", &self.flags)
            .field("breakers", &self.breakers.keys().collect::<Vec<_>>())
            .field("rate_limiters", &self.limiters.keys().collect::<Vec<_>>())
            .field("modes", &self.modes.keys().collect::<Vec<_>>())
            .field("tokens", &self.auth.tokens.len())
            .field("predicate", &self.auth.predicate.is_some())
            .finish()
    }
}

impl Default for AdminRouter {
    fn default() -> Self {
        AdminRouter::new()
    }
}

impl AdminRouter {
    /// Nothing registered, no authorization yet (so [`build`](Self::build) fails until
    /// one is added).
    pub fn new() -> AdminRouter {
        AdminRouter {
            name: "admin".into(),
            flags: None,
            breakers: BTreeMap::new(),
            limiters: BTreeMap::new(),
            modes: BTreeMap::new(),
            auth: Auth::default(),
            bad_token: None,
            observer: SharedObserver::default(),
        }
    }

    /// The flags to list and change.
    #[must_use]
    pub fn flags(mut self, store: FlagStore) -> Self {
        self.flags = Some(store);
        self
    }

    /// A circuit breaker to show and force, under its name.
    #[must_use]
    pub fn breaker(mut self, handle: CircuitBreakerHandle) -> Self {
        self.breakers.insert(handle.name().to_owned(), handle);
        self
    }

    /// A rate limiter to show, under `name`; its mode is registered under the same name
    /// (see [`mode`](Self::mode)).
    #[must_use]
    pub fn rate_limiter(mut self, name: impl Into<String>, handle: RateLimitHandle) -> Self {
        let name = name.into();
        self.modes
            .entry(name.clone())
            .or_insert_with(|| handle.mode());
        self.limiters.insert(name, handle);
        self
    }

    /// A layer's mode to show and switch, under `name` (e.g. a breaker's
    /// `layer.mode_handle()`).
    #[must_use]
    pub fn mode(mut self, name: impl Into<String>, handle: ModeHandle) -> Self {
        self.modes.insert(name.into(), handle);
        self
    }

    /// Accept `Authorization: Bearer <token>`, acting as `principal` in events. Tokens
    /// shorter than [`MIN_TOKEN_LEN`] bytes make [`build`](Self::build) fail. Several
    /// tokens may be added (one per operator or system).
    #[must_use]
    pub fn bearer_token(mut self, principal: impl Into<String>, token: impl AsRef<[u8]>) -> Self {
        let token = token.as_ref();
        if token.len() < MIN_TOKEN_LEN {
            self.bad_token = Some(ConfigError::new(
                "bearer_token",
                format!("must be at least {MIN_TOKEN_LEN} bytes long"),
            ));
        }
        self.auth.tokens.push((principal.into(), digest(token)));
        self
    }

    /// Accept requests for which `check` returns a principal (e.g. from a verified
    /// client certificate header or a session), tried after the bearer tokens.
    #[must_use]
    pub fn authorize<F>(mut self, check: F) -> Self
    where
        F: Fn(&HeaderMap) -> Option<String> + Send + Sync + 'static,
    {
        self.auth.predicate = Some(Arc::new(check));
        self
    }

    /// The name in events (default `"admin"`).
    #[must_use]
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Where [`Event::AdminChanged`] and [`Event::AdminDenied`] go (default: tracing).
    /// Flag changes go to the flag store's observer.
    #[must_use]
    pub fn observer(mut self, observer: impl Observer) -> Self {
        self.observer = SharedObserver::new(observer);
        self
    }

    /// The router. Fails, naming `authorization`, when no bearer token and no predicate
    /// is configured, and naming `bearer_token` when a token is too short.
    pub fn build(self) -> Result<Router, ConfigError> {
        if let Some(e) = self.bad_token {
            return Err(e);
        }
        if self.auth.tokens.is_empty() && self.auth.predicate.is_none() {
            return Err(ConfigError::new(
                "authorization",
                "the admin router needs a bearer token or an authorization predicate",
            ));
        }
        let state = Arc::new(Admin {
            name: self.name,
            flags: self.flags,
            breakers: self.breakers,
            limiters: self.limiters,
            modes: self.modes,
            auth: self.auth,
            observer: self.observer,
        });
        Ok(Router::new()
            .route("/flags", get(list_flags))
            .route(
                "/flags/{name}",
                get(get_flag).put(put_flag).delete(delete_flag),
            )
            .route("/flags/{name}/kill", post(kill_flag))
            .route("/flags/{name}/enable", post(enable_flag))
            .route("/flags/{name}/percentage", put(set_percentage))
            .route("/layers", get(layers))
            .route("/breakers/{name}/{action}", post(breaker_action))
            .route("/modes/{name}", put(set_mode))
            .route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                authorize,
            ))
            .with_state(state))
    }
}

struct Admin {
    name: Arc<str>,
    flags: Option<FlagStore>,
    breakers: BTreeMap<String, CircuitBreakerHandle>,
    limiters: BTreeMap<String, RateLimitHandle>,
    modes: BTreeMap<String, ModeHandle>,
    auth: Auth,
    observer: SharedObserver,
}

type AdminState = State<Arc<Admin>>;

fn json(status: StatusCode, value: &serde_json::Value) -> Response {
    let mut res = Response::new(axum::body::Body::from(value.to_string()));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

fn problem(status: StatusCode, detail: impl fmt::Display) -> Response {
    let doc = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail.to_string(),
    });
    let mut res = json(status, &doc);
    res.headers_mut()
        .insert(header::CONTENT_TYPE, crate::http::response::PROBLEM_JSON);
    res
}

async fn authorize(State(admin): AdminState, mut req: Request, next: Next) -> Response {
    match admin.auth.principal(req.headers()) {
        Some(who) => {
            req.extensions_mut().insert(Principal(who));
            next.run(req).await
        }
        None => {
            let path = format!("{} {}", req.method(), req.uri().path());
            admin.observer.emit(&Event::AdminDenied {
                name: &admin.name,
                path: &path,
            });
            let mut res = problem(StatusCode::UNAUTHORIZED, "valid credentials are required");
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            res
        }
    }
}

fn no_store() -> Response {
    problem(StatusCode::NOT_FOUND, "no flag store is registered")
}

fn flag_result(result: Result<(), FlagError>, store: &FlagStore, name: &str) -> Response {
    match result {
        Ok(()) => match store.get(name) {
            Some(def) => json(StatusCode::OK, &serde_json::json!(def)),
            None => Response::builder()
                .status(StatusCode::NO_CONTENT)
                .body(axum::body::Body::empty())
                .unwrap_or_default(),
        },
        Err(e @ FlagError::NotFound(_)) => problem(StatusCode::NOT_FOUND, e),
        Err(e) => problem(StatusCode::UNPROCESSABLE_ENTITY, e),
    }
}

fn who(req_principal: &Option<axum::Extension<Principal>>) -> &str {
    req_principal.as_ref().map_or("unknown", |p| p.0.0.as_str())
}

async fn list_flags(State(admin): AdminState) -> Response {
    match admin.flags.as_ref() {
        Some(s) => json(StatusCode::OK, &serde_json::json!({ "flags": s.flags() })),
        None => no_store(),
    }
}

async fn get_flag(State(admin): AdminState, Path(name): Path<String>) -> Response {
    let Some(s) = admin.flags.as_ref() else {
        return no_store();
    };
    match s.get(&name) {
        Some(def) => json(StatusCode::OK, &serde_json::json!(def)),
        None => problem(StatusCode::NOT_FOUND, format!("no flag is called `{name}`")),
    }
}

async fn put_flag(
    State(admin): AdminState,
    principal: Option<axum::Extension<Principal>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let Some(s) = admin.flags.as_ref() else {
        return no_store();
    };
    let def: FlagDef = match serde_json::from_slice(&body) {
        Ok(def) => def,
        Err(e) => return problem(StatusCode::BAD_REQUEST, format!("invalid flag: {e}")),
    };
    flag_result(s.by(who(&principal)).set(&name, def), s, &name)
}

async fn delete_flag(
    State(admin): AdminState,
    principal: Option<axum::Extension<Principal>>,
    Path(name): Path<String>,
) -> Response {
    match admin.flags.as_ref() {
        Some(s) => flag_result(s.by(who(&principal)).remove(&name), s, &name),
        None => no_store(),
    }
}

async fn kill_flag(
    State(admin): AdminState,
    principal: Option<axum::Extension<Principal>>,
    Path(name): Path<String>,
) -> Response {
    match admin.flags.as_ref() {
        Some(s) => flag_result(s.by(who(&principal)).kill(&name), s, &name),
        None => no_store(),
    }
}

async fn enable_flag(
    State(admin): AdminState,
    principal: Option<axum::Extension<Principal>>,
    Path(name): Path<String>,
) -> Response {
    match admin.flags.as_ref() {
        Some(s) => flag_result(s.by(who(&principal)).enable(&name), s, &name),
        None => no_store(),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PercentageBody {
    percentage: u8,
}

async fn set_percentage(
    State(admin): AdminState,
    principal: Option<axum::Extension<Principal>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let Some(s) = admin.flags.as_ref() else {
        return no_store();
    };
    let p: PercentageBody = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return problem(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"percentage\": 0-100}}: {e}"),
            );
        }
    };
    flag_result(
        s.by(who(&principal)).set_percentage(&name, p.percentage),
        s,
        &name,
    )
}

fn breaker_json(h: &CircuitBreakerHandle) -> serde_json::Value {
    let m = h.metrics();
    serde_json::json!({
        "state": m.state.as_str(),
        "failure_rate": m.failure_rate,
        "slow_call_rate": m.slow_call_rate,
        "buffered_calls": m.buffered_calls,
        "failed_calls": m.failed_calls,
        "slow_calls": m.slow_calls,
        "not_permitted_calls": m.not_permitted_calls,
        "retry_after_ms": m.retry_after.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    })
}

async fn layers(State(admin): AdminState) -> Response {
    let breakers: serde_json::Map<String, serde_json::Value> = admin
        .breakers
        .iter()
        .map(|(n, h)| (n.clone(), breaker_json(h)))
        .collect();
    let limiters: serde_json::Map<String, serde_json::Value> = admin
        .limiters
        .iter()
        .map(|(n, h)| {
            (
                n.clone(),
                serde_json::json!({
                    "mode": h.mode().get().as_str(),
                    "live_keys": h.live_keys(),
                    "key_capacity": h.key_capacity(),
                    "evicted_keys": h.evicted_keys(),
                }),
            )
        })
        .collect();
    let modes: serde_json::Map<String, serde_json::Value> = admin
        .modes
        .iter()
        .map(|(n, h)| (n.clone(), h.get().as_str().into()))
        .collect();
    json(
        StatusCode::OK,
        &serde_json::json!({
            "breakers": breakers,
            "rate_limiters": limiters,
            "modes": modes,
            "flags": admin.flags.as_ref().map(FlagStore::names),
        }),
    )
}

async fn breaker_action(
    State(admin): AdminState,
    principal: Option<axum::Extension<Principal>>,
    Path((name, action)): Path<(String, String)>,
) -> Response {
    let Some(h) = admin.breakers.get(&name) else {
        return problem(
            StatusCode::NOT_FOUND,
            format!("no breaker is called `{name}`"),
        );
    };
    match action.as_str() {
        "force_open" => h.force_open(),
        "trip" => h.trip(),
        "close" => h.close(),
        "half_open" => h.half_open(),
        "disable" => h.disable(),
        "metrics_only" => h.metrics_only(),
        "reset" => h.reset(),
        _ => {
            return problem(
                StatusCode::NOT_FOUND,
                "actions: force_open, trip, close, half_open, disable, metrics_only, reset",
            );
        }
    }
    admin.observer.emit(&Event::AdminChanged {
        name: &admin.name,
        target: &format!("breaker/{name}"),
        action: &action,
        by: who(&principal),
    });
    json(StatusCode::OK, &breaker_json(h))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ModeBody {
    mode: Mode,
}

async fn set_mode(
    State(admin): AdminState,
    principal: Option<axum::Extension<Principal>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let Some(h) = admin.modes.get(&name) else {
        return problem(StatusCode::NOT_FOUND, format!("no mode is called `{name}`"));
    };
    let body: ModeBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return problem(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"mode\": \"enforce\" | \"shadow\" | \"off\"}}: {e}"),
            );
        }
    };
    let from = h.set(body.mode);
    admin.observer.emit(&Event::AdminChanged {
        name: &admin.name,
        target: &format!("mode/{name}"),
        action: body.mode.as_str(),
        by: who(&principal),
    });
    json(
        StatusCode::OK,
        &serde_json::json!({ "mode": body.mode.as_str(), "previous": from.as_str() }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_by_digest() {
        let mut auth = Auth::default();
        auth.tokens
            .push(("ops".into(), digest(b"0123456789abcdef")));
        let mut h = HeaderMap::new();
        assert_eq!(auth.principal(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer 0123456789abcdef"),
        );
        assert_eq!(auth.principal(&h).as_deref(), Some("ops"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer 0123456789abcdeF"),
        );
        assert_eq!(auth.principal(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic 0123456789abcdef"),
        );
        assert_eq!(auth.principal(&h), None);
    }

    #[test]
    fn build_needs_authorization() {
        assert_eq!(
            AdminRouter::new().build().unwrap_err().field(),
            "authorization"
        );
        assert_eq!(
            AdminRouter::new()
                .bearer_token("ops", "short")
                .build()
                .unwrap_err()
                .field(),
            "bearer_token"
        );
        assert!(AdminRouter::new().authorize(|_| None).build().is_ok());
    }
}
