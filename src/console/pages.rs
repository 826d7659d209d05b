//! The console's pages, rendered by `maud` (every interpolation is HTML-escaped).

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;
use serde_json::Value;

use super::{Console, Notice, Operator, Refused, operator_or_login};
use crate::admin::AdminState;
use crate::error::ApiError;
use crate::event::with_raw;
use crate::store::{DeliveryFilter, DeliveryInfo, DeliveryStatus, StoredEvent};

pub(super) fn html(page: Markup) -> HttpResponse {
    html_status(StatusCode::OK, page)
}

pub(super) fn html_status(status: StatusCode, page: Markup) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .body(page.into_string())
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · sessiongate" }
            link rel="stylesheet" href="/console/style.css";
        }
    }
}

/// A refused state-changing request: 403, saying why, changing nothing.
pub(super) fn refused(why: &str) -> HttpResponse {
    html_status(
        StatusCode::FORBIDDEN,
        html! {
            (DOCTYPE)
            html lang="en" {
                (head("Refused"))
                body {
                    main.narrow {
                        h1 { "Refused" }
                        p.notice.failed #refused { (why) }
                        p { a href="/console/sessions" { "Back to the console" } }
                    }
                }
            }
        },
    )
}

pub(super) fn login(error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head("Log in"))
            body {
                main.narrow {
                    h1 { "sessiongate console" }
                    @if let Some(error) = error {
                        p.notice.failed #login-error { (error) }
                    }
                    form method="post" action="/console/login" {
                        label for="token" { "Admin token (" code { "server.admin_token" } ")" }
                        input #token type="password" name="token" autocomplete="current-password" required autofocus;
                        button #login type="submit" { "Log in" }
                    }
                }
            }
        }
    }
}

/// The strip on every page: the store's state, each target's queue, and each recovering
/// source's last complete poll (or why its recovery stopped).
async fn health(state: &AdminState) -> Markup {
    let store = state.store.ping().await;
    let counts = state.store.delivery_counts().await.unwrap_or_default();
    let dead: u64 = counts.iter().map(|c| c.dead).sum();
    let recovery = state.recoverer.statuses.all();
    html! {
        aside.health #health {
            @match &store {
                Ok(()) => span.ok { "store: ok" },
                Err(e) => span.bad { "store: " (crate::telemetry::chain(e)) },
            }
            @for target in &state.targets {
                @let c = counts.iter().find(|c| c.target == target.name);
                span.target {
                    b { (target.name) } " "
                    (c.map_or(0, |c| c.pending)) " queued · "
                    @let d = c.map_or(0, |c| c.dead);
                    @if d > 0 {
                        a.bad href={ "/console/dead?target=" (target.name) } { (d) " dead" }
                    } @else { "0 dead" }
                }
            }
            span { a href="/console/dead" { (dead) " dead in all" } }
            @for (source, status) in &recovery {
                @if status.state == "stopped" {
                    span.bad.recovery title=[status.last_error.as_deref()] {
                        b { (source) } " recovery stopped: "
                        (status.last_error.as_deref().unwrap_or(""))
                    }
                } @else {
                    span.recovery title=[status.last_error.as_deref()] {
                        b { (source) } " recovered "
                        @match status.last_success {
                            Some(at) => time datetime=(at) { (at) },
                            None => "never yet",
                        }
                        @if status.last_error.is_some() { " (last poll failed)" }
                    }
                }
            }
        }
    }
}

async fn layout(
    state: &AdminState,
    operator: &Operator,
    title: &str,
    current: &str,
    body: Markup,
) -> HttpResponse {
    let health = health(state).await;
    html(html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header {
                    strong { "sessiongate" }
                    nav {
                        a.current[current == "sessions"] href="/console/sessions" { "Sessions" }
                        a.current[current == "dead"] href="/console/dead" { "Dead letters" }
                    }
                    form.logout method="post" action="/console/logout" {
                        input type="hidden" name="csrf" value=(operator.csrf);
                        button type="submit" { "Log out" }
                    }
                }
                (health)
                main {
                    @match &operator.notice {
                        Some(Notice::Done(text)) => p.notice.done #notice { (text) },
                        Some(Notice::Failed(text)) => p.notice.failed #notice { (text) },
                        None => {},
                    }
                    (body)
                }
            }
        }
    })
}

fn error_page(status: StatusCode, message: &str) -> HttpResponse {
    html_status(
        status,
        html! {
            (DOCTYPE)
            html lang="en" {
                (head("Error"))
                body { main.narrow {
                    h1 { "Error" }
                    p.notice.failed { (message) }
                    p { a href="/console/sessions" { "Back to the sessions" } }
                } }
            }
        },
    )
}

fn api_error(e: ApiError) -> HttpResponse {
    use actix_web::ResponseError;
    error_page(e.status_code(), &e.to_string())
}

fn pretty(json: &str) -> String {
    serde_json::from_str::<Value>(json)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| json.to_owned())
}

fn pretty_bytes(raw: &[u8]) -> String {
    match std::str::from_utf8(raw) {
        Ok(text) => pretty(text),
        Err(_) => String::from_utf8_lossy(raw).into_owned(),
    }
}

/// The search form's fields; empty means not given.
#[derive(Deserialize, Default)]
pub(super) struct SessionSearch {
    #[serde(default)]
    session: String,
    #[serde(default)]
    vendor: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    cursor: Option<String>,
}

fn given(s: &str) -> Option<String> {
    Some(s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// A time from the form: RFC 3339, or a browser's `datetime-local` (taken as UTC).
fn form_time(s: &str) -> Option<String> {
    let s = given(s)?;
    if crate::event::Timestamp::parse(&s).is_some() {
        return Some(s);
    }
    let with_seconds = if s.len() == 16 {
        format!("{s}:00")
    } else {
        s.clone()
    };
    let utc = format!("{with_seconds}Z");
    Some(if crate::event::Timestamp::parse(&utc).is_some() {
        utc
    } else {
        s
    })
}

pub(crate) async fn sessions(
    request: HttpRequest,
    console: web::Data<Console>,
    state: web::Data<AdminState>,
    query: web::Query<SessionSearch>,
) -> Result<HttpResponse, Refused> {
    let operator = operator_or_login(&request, &console)?;
    Ok(sessions_page(operator, state, query).await)
}

async fn sessions_page(
    operator: Operator,
    state: web::Data<AdminState>,
    query: web::Query<SessionSearch>,
) -> HttpResponse {
    let q = query.into_inner();
    let filter = crate::admin::SessionsQuery {
        vendor: given(&q.vendor),
        session: given(&q.session),
        since: form_time(&q.since),
        until: form_time(&q.until),
        limit: Some(25),
        cursor: q.cursor.clone(),
    }
    .filter();
    let (found, problem) = match filter {
        Ok(filter) => match state.store.sessions(filter).await {
            Ok(found) => (found, None),
            Err(e) => (vec![], Some(ApiError::Unavailable(e).to_string())),
        },
        Err(e) => (vec![], Some(e.to_string())),
    };
    let next = (found.len() == 25)
        .then(|| found.last().map(|l| l.cursor()))
        .flatten();
    let vendors = crate::vendors::Vendor::ALL.map(crate::vendors::Vendor::as_str);
    let body = html! {
        h1 { "Sessions" }
        form.search #search method="get" action="/console/sessions" {
            label { "Session id " input #session type="search" name="session" value=(q.session) placeholder="exact id"; }
            label { "Vendor "
                select #vendor name="vendor" {
                    option value="" { "any" }
                    @for v in vendors { option value=(v) selected[q.vendor == v] { (v) } }
                }
            }
            label { "First seen from " input type="datetime-local" name="since" value=(q.since); }
            label { "until " input type="datetime-local" name="until" value=(q.until); }
            button #find type="submit" { "Find" }
        }
        @if let Some(problem) = &problem { p.notice.failed { (problem) } }
        @if found.is_empty() && problem.is_none() { p.empty { "No session matches." } }
        @else if !found.is_empty() {
            table #sessions {
                thead { tr { th { "Session" } th { "Vendor" } th { "Agent" } th { "State" } th { "Channel" } th { "Outcome" } th { "Duration" } th { "First seen" } th { "Updated" } th { "Finalized" } } }
                tbody {
                    @for l in &found {
                        @let s = serde_json::to_value(&l.view.session).unwrap_or_default();
                        tr {
                            td { a.session href={ "/console/sessions/" (l.view.vendor) "/" (urlencode(&l.view.session.id)) } { code { (l.view.session.id) } } }
                            td { (l.view.vendor) }
                            td.agent { (s["agentId"].as_str().unwrap_or("–")) }
                            td { (s["state"].as_str().unwrap_or("–")) }
                            td { (s["channel"].as_str().unwrap_or("–")) }
                            td.outcome { (s["call"]["outcome"].as_str().unwrap_or("–")) }
                            td.duration { (duration(&s).unwrap_or_else(|| "–".into())) }
                            td { (utc(l.view.first_seen_at)) }
                            td { (utc(l.view.updated_at)) }
                            td { @if l.view.finalized_event_id.is_some() { "yes" } @else { "not yet" } }
                        }
                    }
                }
            }
        }
        @if let Some(next) = next {
            p.pager { a #older href={ "/console/sessions?" (search_query(&q, &next)) } { "Older sessions →" } }
        }
    };
    layout(&state, &operator, "Sessions", "sessions", body).await
}

fn search_query(q: &SessionSearch, cursor: &str) -> String {
    [
        ("session", q.session.as_str()),
        ("vendor", &q.vendor),
        ("since", &q.since),
        ("until", &q.until),
        ("cursor", cursor),
    ]
    .iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(k, v)| format!("{k}={}", urlencode(v)))
    .collect::<Vec<_>>()
    .join("&")
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A stored time as people read it, saying its zone: `2026-05-03 08:43:02.117 UTC`.
fn utc(time: impl std::fmt::Display) -> String {
    let text = time.to_string();
    match text.strip_suffix('Z') {
        Some(bare) => format!("{} UTC", bare.replacen('T', " ", 1)),
        None => text,
    }
}

/// `1 attempt`, `2 attempts`.
fn count(n: impl Into<u64>, one: &str, many: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { one } else { many })
}

/// A session's length: the call's duration when the vendor gave one, else from its start
/// to its end.
fn duration(session: &Value) -> Option<String> {
    let seconds = session["call"]["durationSeconds"].as_f64().or_else(|| {
        let at = |key: &str| {
            session[key]
                .as_str()
                .and_then(crate::event::Timestamp::parse)
                .map(|t| t.unix_millis())
        };
        Some((at("endedAt")? - at("startedAt")?) as f64 / 1000.0)
    })?;
    let seconds = seconds.max(0.0).round() as u64;
    Some(match seconds {
        0..60 => format!("{seconds} s"),
        _ => format!("{} min {} s", seconds / 60, seconds % 60),
    })
}

fn status_badge(status: DeliveryStatus) -> Markup {
    html! { span class={ "badge " (status.as_str()) } { (status.as_str()) } }
}

fn attempts_table(d: &DeliveryInfo) -> Markup {
    let log = d.attempt_log.as_deref().unwrap_or_default();
    html! {
        @if log.is_empty() { p.empty { "No attempt yet." } }
        @else {
            table.attempts {
                thead { tr { th { "#" } th { "Time" } th { "Answer" } th { "Duration" } } }
                tbody {
                    // Numbered through: an operator's retry starts the schedule over at
                    // attempt 1, which is marked rather than numbered 1 again.
                    @for (i, a) in log.iter().enumerate() {
                        tr.retried[i > 0 && a.attempt == 1] {
                            td {
                                (i + 1)
                                @if i > 0 && a.attempt == 1 { " " span.retry-mark { "after a retry" } }
                            }
                            td { (utc(a.started_at)) }
                            td {
                                @match (a.status_code, &a.error) {
                                    (Some(code), _) if (200..300).contains(&code) => span.ok { "HTTP " (code) },
                                    (Some(code), _) => span.bad { "HTTP " (code) },
                                    (None, Some(error)) => span.bad { (error) },
                                    (None, None) => "–",
                                }
                            }
                            td { (a.duration_ms) " ms" }
                        }
                    }
                }
            }
        }
    }
}

fn retry_button(operator: &Operator, d: &DeliveryInfo, back: &str) -> Markup {
    html! {
        @if d.status == DeliveryStatus::Dead {
            form.inline method="post" action={ "/console/deliveries/" (d.id.as_str()) "/retry" } {
                input type="hidden" name="csrf" value=(operator.csrf);
                input type="hidden" name="back" value=(back);
                button.retry type="submit" data-delivery=(d.id.as_str()) { "Retry" }
            }
        }
    }
}

fn replay_form(operator: &Operator, state: &AdminState, e: &StoredEvent, back: &str) -> Markup {
    html! {
        form.inline.replay method="post" action={ "/console/events/" (e.id.as_str()) "/replay" } {
            input type="hidden" name="csrf" value=(operator.csrf);
            input type="hidden" name="back" value=(back);
            select name="target" aria-label="Replay to" {
                option value="" { "every matching target" }
                @for t in &state.targets { option value=(t.name) { (t.name) } }
            }
            button.replay type="submit" data-event=(e.id.as_str()) { "Replay" }
        }
    }
}

pub(crate) async fn timeline(
    request: HttpRequest,
    console: web::Data<Console>,
    state: web::Data<AdminState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, Refused> {
    let operator = operator_or_login(&request, &console)?;
    Ok(timeline_page(operator, state, path).await)
}

async fn timeline_page(
    operator: Operator,
    state: web::Data<AdminState>,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    let (vendor, session_id) = path.into_inner();
    let view = match state.store.session(&vendor, &session_id).await {
        Ok(Some(view)) => view,
        Ok(None) => {
            return error_page(
                StatusCode::NOT_FOUND,
                &format!("No session {session_id} from vendor `{vendor}`."),
            );
        }
        Err(e) => return api_error(ApiError::Unavailable(e)),
    };
    let timeline = match state
        .store
        .timeline(&vendor, state.sources_of(&vendor), &session_id)
        .await
    {
        Ok(timeline) => timeline,
        Err(e) => return api_error(ApiError::Unavailable(e)),
    };
    let back = format!("/console/sessions/{vendor}/{}", urlencode(&session_id));
    let record = serde_json::to_string_pretty(&view.session).unwrap_or_default();
    let body = html! {
        h1 { "Session " code #session-id { (session_id) } }
        dl.summary {
            dt { "Vendor" } dd { (vendor) }
            dt { "First seen" } dd { (utc(view.first_seen_at)) }
            dt { "Updated" } dd { (utc(view.updated_at)) }
            dt { "Finalized" } dd {
                @match &view.finalized_event_id { Some(id) => code { (id.as_str()) }, None => "not yet" }
            }
        }
        section #requests {
            h2 { "Vendor requests (" (timeline.receipts.len()) ")" }
            @for r in &timeline.receipts {
                article.request data-outcome=(r.outcome) {
                    p {
                        b { (utc(&r.received_at)) } " · source " code { (r.source) }
                        @if let Some(t) = &r.vendor_event_type { " · " code { (t) } }
                        @if let Some(m) = &r.message_id { " · message " code { (m) } }
                        " · answered " span.ok {
                            @if r.outcome == "duplicate" { "200 duplicate (already received; nothing new stored)" }
                            @else { "202 " (r.outcome) }
                        }
                    }
                    details { summary { "Raw body as received (" (r.raw.len()) " bytes)" } pre { (pretty_bytes(&r.raw)) } }
                }
            }
        }
        section #merged {
            h2 { "Merged record" }
            details { summary { "The session as merged from every event" } pre { (record) } }
        }
        section #events {
            h2 { "Canonical events and deliveries (" (timeline.events.len()) ")" }
            @for e in &timeline.events {
                article.event data-type=(e.event_type) {
                    h3 { code { (e.event_type) } " " small { code { (e.id.as_str()) } } }
                    details { summary { "Event as delivered" } pre { (pretty_bytes(&with_raw(&e.body, &e.raw))) } }
                    (replay_form(&operator, &state, e, &back))
                    @let deliveries: Vec<&DeliveryInfo> = timeline.deliveries.iter().filter(|d| d.event_id == e.id).collect();
                    @if deliveries.is_empty() { p.empty { "No delivery (no target takes this event, or it waits for its transcript or recording)." } }
                    @for d in deliveries {
                        div.delivery data-delivery=(d.id.as_str()) data-status=(d.status.as_str()) {
                            p {
                                "to " b { (d.target) } " " (status_badge(d.status)) " "
                                small { code { (d.id.as_str()) } } " · "
                                (count(d.attempts, "attempt", "attempts")) " in this schedule"
                                @if let Some(next) = d.next_attempt_at { " · next " (utc(next)) }
                                " " (retry_button(&operator, d, &back))
                            }
                            (attempts_table(d))
                        }
                    }
                }
            }
        }
    };
    layout(
        &state,
        &operator,
        &format!("Session {session_id}"),
        "sessions",
        body,
    )
    .await
}

#[derive(Deserialize)]
pub(super) struct DeadQuery {
    #[serde(default)]
    target: String,
    cursor: Option<String>,
}

pub(crate) async fn dead_letters(
    request: HttpRequest,
    console: web::Data<Console>,
    state: web::Data<AdminState>,
    query: web::Query<DeadQuery>,
) -> Result<HttpResponse, Refused> {
    let operator = operator_or_login(&request, &console)?;
    Ok(dead_letters_page(operator, state, query).await)
}

async fn dead_letters_page(
    operator: Operator,
    state: web::Data<AdminState>,
    query: web::Query<DeadQuery>,
) -> HttpResponse {
    let q = query.into_inner();
    let target = given(&q.target);
    let before = match q.cursor.as_deref().map(str::parse::<i64>).transpose() {
        Ok(before) => before,
        Err(_) => {
            return error_page(
                StatusCode::BAD_REQUEST,
                "That page cursor is not one the console gave out.",
            );
        }
    };
    const PAGE: usize = 50;
    let dead = match state
        .store
        .deliveries(DeliveryFilter {
            status: Some(DeliveryStatus::Dead),
            target: target.clone(),
            before,
            limit: PAGE,
            with_attempts: true,
            ..Default::default()
        })
        .await
    {
        Ok(dead) => dead,
        Err(e) => return api_error(ApiError::Unavailable(e)),
    };
    // Each event's session, to link to its timeline (one indexed read per row).
    let mut sessions = Vec::with_capacity(dead.len());
    for d in &dead {
        let event = state.store.event(d.event_id.as_str()).await.ok().flatten();
        sessions.push(event.and_then(|e| {
            let vendor = state.sources.iter().find(|(name, _)| *name == e.source)?.1;
            Some((vendor.as_str(), e.session_id, e.event_type))
        }));
    }
    let next = (dead.len() == PAGE)
        .then(|| dead.last().map(|d| d.seq))
        .flatten();
    let back = match &target {
        Some(t) => format!("/console/dead?target={}", urlencode(t)),
        None => "/console/dead".into(),
    };
    let body = html! {
        h1 { "Dead letters" }
        form.search method="get" action="/console/dead" {
            label { "Target "
                select #target name="target" {
                    option value="" { "all" }
                    @for t in &state.targets { option value=(t.name) selected[target.as_deref() == Some(t.name.as_str())] { (t.name) } }
                }
            }
            button type="submit" { "Show" }
        }
        @if dead.is_empty() { p.empty #no-dead { "No dead delivery" @if let Some(t) = &target { " to " (t) } "." } }
        @else {
            form.inline method="post" action="/console/dead/retry" {
                input type="hidden" name="csrf" value=(operator.csrf);
                input type="hidden" name="back" value=(back);
                input type="hidden" name="target" value=(target.clone().unwrap_or_default());
                button #retry-all type="submit" {
                    "Retry all dead deliveries" @if let Some(t) = &target { " to " (t) }
                }
            }
            table #dead {
                thead { tr { th { "Delivery" } th { "Target" } th { "Event" } th { "Session" } th { "Attempts" } th { "Last answer" } th { "Died" } th {} } }
                tbody {
                    @for (d, session) in dead.iter().zip(&sessions) {
                        tr data-delivery=(d.id.as_str()) {
                            td { code { (d.id.as_str()) } }
                            td { (d.target) }
                            td { @match session { Some((_, _, t)) => code { (t) }, None => "–" } }
                            td { @match session {
                                Some((v, s, _)) => a href={ "/console/sessions/" (v) "/" (urlencode(s)) } { code { (s) } },
                                None => code { (d.event_id.as_str()) },
                            } }
                            td { (d.attempt_log.as_ref().map_or(0, Vec::len)) }
                            td { @match (d.last_status, &d.last_error) {
                                (Some(code), _) => span.bad { "HTTP " (code) },
                                // The whole text is on the delivery, in its session's timeline.
                                (None, Some(e)) => span.bad.error title=(e) { (crate::telemetry::shorten(e, 80)) },
                                _ => "–",
                            } }
                            td { (utc(d.updated_at)) }
                            td { (retry_button(&operator, d, &back)) }
                        }
                    }
                }
            }
            @if let Some(next) = next {
                p.pager { a href={ (back) @if target.is_some() { "&" } @else { "?" } "cursor=" (next) } { "Older →" } }
            }
        }
    };
    layout(&state, &operator, "Dead letters", "dead", body).await
}
