//! The operator's console (`/console`, contract section 11): sessions, a session's timeline,
//! dead letters, replays; served by the binary itself, on the admin listener.
//!
//! - **Login**: the admin token, once. The answer is a random session id in an HttpOnly,
//!   SameSite=Strict cookie scoped to `/console`; the session lives in this process (a
//!   restart logs operators out) for [`LIFETIME`].
//! - **CSRF**: every state-changing request is a POST carrying the session's own random
//!   token in a hidden field, compared in constant time; a POST whose `Origin` is not this
//!   host's is refused before that. SameSite=Strict keeps the cookie off cross-site requests
//!   too, so a forged form arrives logged out.
//! - **No external asset**: pages are rendered by `maud` (escaped by construction) and the
//!   one stylesheet is compiled in; there is no script at all. The Content-Security-Policy
//!   allows only this origin's stylesheet and forms.
//!
//! Actions reuse the admin API's own functions (`retry_one`, `retry_dead`, `replay`), so the
//! console and the API cannot disagree about what a retry or a replay does.

mod pages;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use rand::RngCore;
use secrecy::ExposeSecret;
use serde::Deserialize;

use crate::admin::AdminState;
use crate::auth::constant_time_eq;

/// How long a login lasts.
pub const LIFETIME: Duration = Duration::from_secs(8 * 3600);
/// The most logins kept at once; the oldest goes first.
const MAX_LOGINS: usize = 256;
const COOKIE: &str = "sessiongate_console";

const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";
const STYLE: &str = include_str!("style.css");

/// The console's logins.
#[derive(Default)]
pub struct Console {
    logins: Mutex<HashMap<String, Login>>,
}

struct Login {
    csrf: String,
    started: Instant,
    /// What the last action did, shown once on the next page.
    notice: Option<Notice>,
}

#[derive(Clone, Debug)]
pub(crate) enum Notice {
    Done(String),
    Failed(String),
}

/// A logged-in operator, as a page sees them.
pub(crate) struct Operator {
    pub csrf: String,
    pub notice: Option<Notice>,
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn cookie_value(request: &HttpRequest) -> Option<String> {
    request
        .headers()
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

impl Console {
    fn locked(&self) -> std::sync::MutexGuard<'_, HashMap<String, Login>> {
        self.logins.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn start(&self) -> String {
        let id = random_hex();
        let mut logins = self.locked();
        logins.retain(|_, l| l.started.elapsed() < LIFETIME);
        if logins.len() >= MAX_LOGINS
            && let Some(oldest) = logins
                .iter()
                .min_by_key(|(_, l)| l.started)
                .map(|(id, _)| id.clone())
        {
            logins.remove(&oldest);
        }
        logins.insert(
            id.clone(),
            Login {
                csrf: random_hex(),
                started: Instant::now(),
                notice: None,
            },
        );
        id
    }

    /// The CSRF token of the live login `request`'s cookie names, leaving its notice for
    /// the page the action goes back to.
    fn csrf(&self, request: &HttpRequest) -> Option<String> {
        let id = cookie_value(request)?;
        let logins = self.locked();
        let login = logins.get(&id)?;
        (login.started.elapsed() < LIFETIME).then(|| login.csrf.clone())
    }

    /// The operator whose cookie `request` carries, with the notice left for them (taken).
    fn operator(&self, request: &HttpRequest) -> Option<Operator> {
        let id = cookie_value(request)?;
        let mut logins = self.locked();
        let login = logins.get_mut(&id)?;
        if login.started.elapsed() >= LIFETIME {
            logins.remove(&id);
            return None;
        }
        Some(Operator {
            csrf: login.csrf.clone(),
            notice: login.notice.take(),
        })
    }

    fn leave_notice(&self, request: &HttpRequest, notice: Notice) {
        if let Some(id) = cookie_value(request)
            && let Some(login) = self.locked().get_mut(&id)
        {
            login.notice = Some(notice);
        }
    }

    fn end(&self, request: &HttpRequest) {
        if let Some(id) = cookie_value(request) {
            self.locked().remove(&id);
        }
    }
}

/// Registers the console's routes (on the admin listener, with [`AdminState`]).
pub fn routes(config: &mut web::ServiceConfig) {
    config.service(
        web::scope("/console")
            .wrap_fn(|request, service| {
                use actix_web::dev::Service;
                let done = service.call(request);
                async move {
                    let mut response = done.await?;
                    let headers = response.headers_mut();
                    for (name, value) in [
                        (header::CONTENT_SECURITY_POLICY, CSP),
                        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                        (header::REFERRER_POLICY, "same-origin"),
                        (header::X_FRAME_OPTIONS, "DENY"),
                    ] {
                        headers.insert(name, HeaderValue::from_static(value));
                    }
                    if !headers.contains_key(header::CACHE_CONTROL) {
                        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                    }
                    Ok(response)
                }
            })
            .route("", web::get().to(home))
            .route("/", web::get().to(home))
            .route("/style.css", web::get().to(style))
            .route("/login", web::get().to(login_page))
            .route("/login", web::post().to(login))
            .route("/logout", web::post().to(logout))
            .route("/sessions", web::get().to(pages::sessions))
            .route(
                "/sessions/{vendor}/{session_id}",
                web::get().to(pages::timeline),
            )
            .route("/dead", web::get().to(pages::dead_letters))
            .route("/dead/retry", web::post().to(retry_all))
            .route("/deliveries/{id}/retry", web::post().to(retry_one))
            .route("/events/{id}/replay", web::post().to(replay)),
    );
}

fn see_other(location: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, location))
        .finish()
}

/// Where an action goes back to: a console page, never elsewhere. The path is resolved
/// (`.` and `..` segments, also written `%2e`) before it is checked, so
/// `/console/../admin/sessions` cannot leave the console.
fn back_to(back: Option<&str>) -> String {
    const HOME: &str = "/console/sessions";
    let Some(back) = back else {
        return HOME.into();
    };
    if !back.starts_with("/console/")
        || back.contains("//")
        || back.contains('\\')
        || back.chars().any(char::is_control)
    {
        return HOME.into();
    }
    let (path, rest) = back.split_at(back.find(['?', '#']).unwrap_or(back.len()));
    let mut resolved: Vec<&str> = Vec::new();
    for segment in path.split('/').skip(1) {
        match segment.to_ascii_lowercase().replace("%2e", ".").as_str() {
            "." => {}
            ".." => {
                resolved.pop();
            }
            _ => resolved.push(segment),
        }
    }
    let resolved = format!("/{}{rest}", resolved.join("/"));
    match resolved.starts_with("/console/") {
        true => resolved,
        false => HOME.into(),
    }
}

async fn home() -> HttpResponse {
    see_other("/console/sessions")
}

async fn style() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "max-age=300"))
        .body(STYLE)
}

/// Why the console did not do what was asked: a page asked for logged out goes to the
/// login page; a refused change is a 403 page saying why, having changed nothing.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refused {
    #[error("log in first")]
    LoginFirst,
    #[error(
        "You are not logged in to the console (or your login expired), so nothing was \
         changed. Log in and try again."
    )]
    NotLoggedIn,
    #[error("This request came from another site's page, so it was refused (CSRF protection).")]
    OtherOrigin,
    #[error("The form's CSRF token is missing or not this login's, so nothing was changed.")]
    BadCsrf,
}

impl actix_web::ResponseError for Refused {
    fn status_code(&self) -> actix_web::http::StatusCode {
        match self {
            Refused::LoginFirst => actix_web::http::StatusCode::SEE_OTHER,
            _ => actix_web::http::StatusCode::FORBIDDEN,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            Refused::LoginFirst => see_other("/console/login"),
            refused => pages::refused(&refused.to_string()),
        }
    }
}

/// The operator, or the login page for a page asked for without one.
pub(crate) fn operator_or_login(
    request: &HttpRequest,
    console: &Console,
) -> Result<Operator, Refused> {
    console.operator(request).ok_or(Refused::LoginFirst)
}

async fn login_page(request: HttpRequest, console: web::Data<Console>) -> HttpResponse {
    if console.csrf(&request).is_some() {
        return see_other("/console/sessions");
    }
    pages::html(pages::login(None))
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(
    request: HttpRequest,
    console: web::Data<Console>,
    state: web::Data<AdminState>,
    form: web::Form<LoginForm>,
) -> Result<HttpResponse, Refused> {
    same_origin(&request)?;
    let peer = request.peer_addr().map(|a| a.ip());
    let too_many = |wait: crate::admin::guard::Wait| {
        let mut page = pages::html_status(
            actix_web::http::StatusCode::TOO_MANY_REQUESTS,
            pages::login(Some(&format!(
                "Too many wrong tokens from this address; try again in {} s.",
                wait.seconds()
            ))),
        );
        page.headers_mut().insert(
            header::RETRY_AFTER,
            header::HeaderValue::from(wait.seconds()),
        );
        page
    };
    if let Err(wait) = state.guard.admit(peer, "console login") {
        return Ok(too_many(wait));
    }
    let expected = state.token.expose_secret().as_bytes();
    if form.token.is_empty() || !constant_time_eq(form.token.as_bytes(), expected) {
        if let Some(wait) = state.guard.failed(peer, "console login") {
            return Ok(too_many(wait));
        }
        return Ok(pages::html_status(
            actix_web::http::StatusCode::UNAUTHORIZED,
            pages::login(Some("That is not the admin token.")),
        ));
    }
    state.guard.succeeded(peer);
    let id = console.start();
    tracing::info!("Console login");
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/console/sessions"))
        .insert_header((
            header::SET_COOKIE,
            format!(
                "{COOKIE}={id}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}",
                LIFETIME.as_secs()
            ),
        ))
        .finish())
}

/// Refuses a POST whose `Origin` (when the browser sends one) is not this console's origin:
/// the same scheme, host and port (a default port written or not).
fn same_origin(request: &HttpRequest) -> Result<(), Refused> {
    let Some(origin) = request.headers().get(header::ORIGIN) else {
        return Ok(());
    };
    let info = request.connection_info();
    let ours = origin_of(info.scheme(), info.host());
    let theirs = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .and_then(|(scheme, host)| origin_of(scheme, host));
    if ours.is_some() && ours == theirs {
        return Ok(());
    }
    tracing::warn!(origin = ?origin, "Console request from another origin refused");
    Err(Refused::OtherOrigin)
}

/// `(scheme, host, port)` of an origin, the port filled in for http and https.
fn origin_of(scheme: &str, authority: &str) -> Option<(String, String, u16)> {
    let scheme = scheme.to_ascii_lowercase();
    let default = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let url = reqwest::Url::parse(&format!("{scheme}://{authority}/")).ok()?;
    if url.path() != "/" || !url.username().is_empty() || url.query().is_some() {
        return None;
    }
    let host = url.host_str()?.to_ascii_lowercase();
    Some((scheme, host, url.port().unwrap_or(default)))
}

/// The operator of a state-changing request: logged in, same origin, and the form's CSRF
/// token is their session's.
fn checked(request: &HttpRequest, console: &Console, csrf: &str) -> Result<(), Refused> {
    same_origin(request)?;
    let expected = console.csrf(request).ok_or(Refused::NotLoggedIn)?;
    if csrf.is_empty() || !constant_time_eq(csrf.as_bytes(), expected.as_bytes()) {
        tracing::warn!("Console request with a wrong CSRF token refused");
        return Err(Refused::BadCsrf);
    }
    Ok(())
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    request: HttpRequest,
    console: web::Data<Console>,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, Refused> {
    checked(&request, &console, &form.csrf)?;
    console.end(&request);
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/console/login"))
        .insert_header((
            header::SET_COOKIE,
            format!("{COOKIE}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0"),
        ))
        .finish())
}

#[derive(Deserialize)]
struct ActionForm {
    #[serde(default)]
    csrf: String,
    back: Option<String>,
    /// Empty: every target (bulk retry) or every matching target (replay).
    #[serde(default)]
    target: String,
}

impl ActionForm {
    fn target(&self) -> Option<String> {
        Some(self.target.trim().to_owned()).filter(|t| !t.is_empty())
    }
}

/// Runs an action, leaves what it did as the operator's notice, and goes back.
fn finish(
    request: &HttpRequest,
    console: &Console,
    back: Option<&str>,
    outcome: Result<String, crate::error::ApiError>,
) -> HttpResponse {
    let notice = match outcome {
        Ok(done) => Notice::Done(done),
        Err(e) => Notice::Failed(e.to_string()),
    };
    console.leave_notice(request, notice);
    see_other(&back_to(back))
}

async fn retry_one(
    request: HttpRequest,
    id: web::Path<String>,
    console: web::Data<Console>,
    state: web::Data<AdminState>,
    form: web::Form<ActionForm>,
) -> Result<HttpResponse, Refused> {
    checked(&request, &console, &form.csrf)?;
    let outcome = crate::admin::retry_one(&state, &id)
        .await
        .map(|()| format!("Delivery {id} is queued again."));
    Ok(finish(&request, &console, form.back.as_deref(), outcome))
}

async fn retry_all(
    request: HttpRequest,
    console: web::Data<Console>,
    state: web::Data<AdminState>,
    form: web::Form<ActionForm>,
) -> Result<HttpResponse, Refused> {
    checked(&request, &console, &form.csrf)?;
    let target = form.target();
    let outcome = crate::admin::retry_dead(&state, Some("dead"), target.clone())
        .await
        .map(|r| {
            format!(
                "{} dead deliveries{} are queued again.",
                r.retried,
                target.map_or(String::new(), |t| format!(" of {t}"))
            )
        });
    Ok(finish(&request, &console, form.back.as_deref(), outcome))
}

async fn replay(
    request: HttpRequest,
    id: web::Path<String>,
    console: web::Data<Console>,
    state: web::Data<AdminState>,
    form: web::Form<ActionForm>,
) -> Result<HttpResponse, Refused> {
    checked(&request, &console, &form.csrf)?;
    let outcome = crate::admin::replay(&state, &id, form.target())
        .await
        .map(|created| {
            format!(
                "Event {id} is being sent again as {} new {}.",
                created.len(),
                if created.len() == 1 {
                    "delivery"
                } else {
                    "deliveries"
                }
            )
        });
    Ok(finish(&request, &console, form.back.as_deref(), outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_only_go_back_to_console_pages() {
        assert_eq!(
            back_to(Some("/console/dead?target=crm")),
            "/console/dead?target=crm"
        );
        for elsewhere in [
            "https://evil.example/",
            "//evil.example/console/",
            "/console/\\evil",
            "/consolex",
            "/console/a\r\nSet-Cookie: x",
        ] {
            assert_eq!(
                back_to(Some(elsewhere)),
                "/console/sessions",
                "{elsewhere:?}"
            );
        }
        assert_eq!(back_to(None), "/console/sessions");
        for dotted in [
            "/console/../admin/sessions",
            "/console/%2e%2e/admin/sessions",
            "/console/%2E%2e/metrics",
            "/console/./../../admin/events?x=1",
        ] {
            assert_eq!(back_to(Some(dotted)), "/console/sessions", "{dotted}");
        }
        assert_eq!(
            back_to(Some("/console/dead/../sessions/./x?back=..")),
            "/console/sessions/x?back=.."
        );
    }

    #[test]
    fn an_origin_is_its_scheme_host_and_port() {
        let o = |s, a| origin_of(s, a);
        assert_eq!(o("http", "gw.example"), o("http", "gw.example:80"));
        assert_eq!(o("HTTPS", "GW.example:443"), o("https", "gw.example"));
        assert_ne!(o("http", "gw.example"), o("https", "gw.example"));
        assert_ne!(o("http", "gw.example:8080"), o("http", "gw.example:9090"));
        assert_ne!(o("http", "gw.example"), o("http", "gw.example.evil"));
        assert_eq!(o("file", "x"), None);
        assert_eq!(o("http", "user@gw.example"), None);
    }

    #[test]
    fn logins_expire_and_are_bounded() {
        let console = Console::default();
        let ids: Vec<String> = (0..MAX_LOGINS + 10).map(|_| console.start()).collect();
        assert_eq!(console.locked().len(), MAX_LOGINS);
        assert!(
            !console.locked().contains_key(&ids[0]),
            "the oldest went first"
        );
        assert_ne!(ids[1], ids[2]);
        assert_eq!(ids[1].len(), 64);
    }
}
