//! The operator's lists (sessions, deliveries) and a session's timeline.
//!
//! Each list is one bounded, indexed query: the SQL names only the filters given, so that
//! each combination reads its own index newest first and stops at the page size (a
//! `(?1 IS NULL OR x = ?1)` clause would hide the index from both planners). The status of a
//! delivery is written into the SQL as a literal, from [`DeliveryStatus::as_str`] and never
//! from input, so the partial index on dead deliveries applies.

use serde::Serialize;

use super::schema::Dialect;
use super::{DeliveryFilter, DeliveryInfo, ReceiptInfo, SessionView, StoredEvent};

/// A session's page in the operator's session search, newest first (by when first seen).
#[derive(Debug, Clone, Default)]
pub struct SessionFilter {
    pub vendor: Option<String>,
    /// An exact session id. Without `vendor`, looked up under each of `vendors`.
    pub session_id: Option<String>,
    /// Every vendor the gateway knows, for a session id given without one.
    pub vendors: Vec<String>,
    /// First seen at or after (unix ms).
    pub since: Option<i64>,
    /// First seen before (unix ms).
    pub until: Option<i64>,
    /// Only sessions older than this cursor: `(first seen ms, seq)` from an earlier page.
    pub before: Option<(i64, i64)>,
    pub limit: usize,
}

/// One session in a list, with what its page cursor is made of.
#[derive(Debug, Clone)]
pub struct SessionListing {
    pub seq: i64,
    pub view: SessionView,
}

impl SessionListing {
    /// The cursor for the page after this one: `first seen ms:seq`.
    pub fn cursor(&self) -> String {
        format!("{}:{}", self.view.first_seen_at.unix_millis(), self.seq)
    }
}

/// Everything stored about one session, for the console's timeline.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    /// Its canonical events, oldest first.
    pub events: Vec<StoredEvent>,
    /// The vendor requests those events came from, oldest first.
    pub receipts: Vec<ReceiptInfo>,
    /// Every delivery of those events, oldest first, each with its attempts.
    pub deliveries: Vec<DeliveryInfo>,
}

/// The most events one timeline shows (a session has a handful; this bounds a hostile one).
pub const TIMELINE_EVENTS: usize = 500;

/// A bound value of a built statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Text(String),
    Int(i64),
}

/// A statement built for one dialect, with its arguments in placeholder order.
#[derive(Debug, Default)]
pub struct Built {
    pub sql: String,
    pub args: Vec<Arg>,
}

impl Built {
    fn placeholder(&mut self, dialect: Dialect, arg: Arg) -> String {
        self.args.push(arg);
        match dialect {
            Dialect::Sqlite => format!("?{}", self.args.len()),
            Dialect::Postgres => format!("${}", self.args.len()),
        }
    }
}

/// `SELECT columns FROM deliveries WHERE … ORDER BY seq DESC LIMIT n`, with only the
/// filters given. The dead-letter list (`status = 'dead'`, with or without a target) reads
/// a partial index that holds dead deliveries only.
pub fn deliveries_query(dialect: Dialect, columns: &str, filter: &DeliveryFilter) -> Built {
    let mut built = Built::default();
    let mut clauses: Vec<String> = Vec::new();
    if let Some(status) = filter.status {
        clauses.push(format!("status = '{}'", status.as_str()));
    }
    if filter.failing {
        clauses.push("attempts > 0".into());
    }
    if let Some(target) = &filter.target {
        let p = built.placeholder(dialect, Arg::Text(target.clone()));
        clauses.push(format!("target = {p}"));
    }
    if let Some(event) = &filter.event_id {
        let p = built.placeholder(dialect, Arg::Text(event.clone()));
        clauses.push(match dialect {
            // SQLite indexes deliveries by their event's sequence only (migration 5).
            Dialect::Sqlite => format!("event_seq = (SELECT seq FROM events WHERE id = {p})"),
            Dialect::Postgres => format!("event_id = {p}"),
        });
    }
    if let Some(before) = filter.before {
        let p = built.placeholder(dialect, Arg::Int(before));
        clauses.push(format!("seq < {p}"));
    }
    let limit = built.placeholder(dialect, Arg::Int(filter.limit as i64));
    built.sql = format!(
        "SELECT {columns} FROM deliveries{} ORDER BY seq DESC LIMIT {limit}",
        where_clause(&clauses)
    );
    built
}

/// The columns a session list reads, in [`sessions_query`]'s order.
pub const SESSION_COLUMNS: &str =
    "seq, vendor, session_id, record, finalized_event_id, created_at, updated_at";

/// `SELECT … FROM sessions WHERE … ORDER BY created_at DESC, seq DESC LIMIT n`: by session
/// id through the primary key (one probe per vendor), else newest first through
/// `sessions_newest` or, for one vendor, `sessions_newest_by_vendor`.
pub fn sessions_query(dialect: Dialect, filter: &SessionFilter) -> Built {
    let mut built = Built::default();
    let mut clauses: Vec<String> = Vec::new();
    match (&filter.vendor, &filter.session_id) {
        (Some(vendor), _) => {
            let p = built.placeholder(dialect, Arg::Text(vendor.clone()));
            clauses.push(format!("vendor = {p}"));
        }
        (None, Some(_)) => {
            let list: Vec<String> = filter
                .vendors
                .iter()
                .map(|v| built.placeholder(dialect, Arg::Text(v.clone())))
                .collect();
            clauses.push(if list.is_empty() {
                "1 = 0".into()
            } else {
                format!("vendor IN ({})", list.join(", "))
            });
        }
        (None, None) => {}
    }
    if let Some(id) = &filter.session_id {
        let p = built.placeholder(dialect, Arg::Text(id.clone()));
        clauses.push(format!("session_id = {p}"));
    }
    if let Some(since) = filter.since {
        let p = built.placeholder(dialect, Arg::Int(since));
        clauses.push(format!("created_at >= {p}"));
    }
    if let Some(until) = filter.until {
        let p = built.placeholder(dialect, Arg::Int(until));
        clauses.push(format!("created_at < {p}"));
    }
    if let Some((at, seq)) = filter.before {
        let at = built.placeholder(dialect, Arg::Int(at));
        let seq = built.placeholder(dialect, Arg::Int(seq));
        clauses.push(format!("(created_at, seq) < ({at}, {seq})"));
    }
    let limit = built.placeholder(dialect, Arg::Int(filter.limit as i64));
    built.sql = format!(
        "SELECT {SESSION_COLUMNS} FROM sessions{} ORDER BY created_at DESC, seq DESC LIMIT {limit}",
        where_clause(&clauses)
    );
    built
}

fn where_clause(clauses: &[String]) -> String {
    if clauses.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", clauses.join(" AND "))
    }
}

/// `{"retried": N}` from a bulk retry, with the targets to wake.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Retried {
    /// How many dead deliveries were re-queued.
    pub retried: u64,
    #[serde(skip)]
    pub targets: Vec<String>,
}

/// From the target of each re-queued delivery.
impl FromIterator<String> for Retried {
    fn from_iter<I: IntoIterator<Item = String>>(targets: I) -> Retried {
        let mut retried = Retried::default();
        for target in targets {
            retried.retried += 1;
            if !retried.targets.contains(&target) {
                retried.targets.push(target);
            }
        }
        retried
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DeliveryStatus;

    #[test]
    fn only_the_filters_given_are_in_the_sql() {
        let dead = deliveries_query(
            Dialect::Sqlite,
            "seq",
            &DeliveryFilter {
                status: Some(DeliveryStatus::Dead),
                limit: 50,
                ..Default::default()
            },
        );
        assert_eq!(
            dead.sql,
            "SELECT seq FROM deliveries WHERE status = 'dead' ORDER BY seq DESC LIMIT ?1"
        );
        assert_eq!(dead.args, vec![Arg::Int(50)]);

        let page = deliveries_query(
            Dialect::Postgres,
            "seq",
            &DeliveryFilter {
                status: Some(DeliveryStatus::Dead),
                target: Some("crm".into()),
                before: Some(9),
                limit: 10,
                ..Default::default()
            },
        );
        assert_eq!(
            page.sql,
            "SELECT seq FROM deliveries WHERE status = 'dead' AND target = $1 AND seq < $2 \
             ORDER BY seq DESC LIMIT $3"
        );
        assert_eq!(
            page.args,
            vec![Arg::Text("crm".into()), Arg::Int(9), Arg::Int(10)]
        );
    }

    #[test]
    fn a_session_id_without_a_vendor_is_looked_up_under_each_vendor() {
        let built = sessions_query(
            Dialect::Sqlite,
            &SessionFilter {
                session_id: Some("s-1".into()),
                vendors: vec!["agntix".into(), "pathors".into()],
                limit: 5,
                ..Default::default()
            },
        );
        assert!(
            built
                .sql
                .contains("WHERE vendor IN (?1, ?2) AND session_id = ?3"),
            "{}",
            built.sql
        );
        let none = sessions_query(
            Dialect::Postgres,
            &SessionFilter {
                session_id: Some("s-1".into()),
                limit: 5,
                ..Default::default()
            },
        );
        assert!(none.sql.contains("WHERE 1 = 0"), "{}", none.sql);
        let newest = sessions_query(
            Dialect::Postgres,
            &SessionFilter {
                before: Some((100, 7)),
                limit: 5,
                ..Default::default()
            },
        );
        assert!(
            newest.sql.ends_with(
                "WHERE (created_at, seq) < ($1, $2) ORDER BY created_at DESC, seq DESC LIMIT $3"
            ),
            "{}",
            newest.sql
        );
    }
}
