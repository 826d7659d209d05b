//! What the voice platforms' adapters share: how a call ended, who is who by direction, and
//! transcripts built from a payload's turns.

use serde_json::{Number, Value};

use super::fields::{Fields, PayloadError};

use crate::event::{
    Call, CallOutcome, Customer, Direction, Party, Role, Timestamp, Transcript, TranscriptMessage,
    TranscriptStatus,
};

/// How a call ended, as the canonical `call` says it: an outcome and who ended it.
pub(super) type Ending = (CallOutcome, Option<Party>);

pub(super) const USER_HUNG_UP: Ending = (CallOutcome::Completed, Some(Party::User));
pub(super) const AGENT_HUNG_UP: Ending = (CallOutcome::Completed, Some(Party::Agent));
pub(super) const TRANSFERRED: Ending = (CallOutcome::Transferred, Some(Party::Agent));
/// Timeouts and maximum durations: the call completed, nobody chose to end it.
pub(super) const TIMED_OUT: Ending = (CallOutcome::Completed, None);
pub(super) const VOICEMAIL: Ending = (CallOutcome::Voicemail, None);
pub(super) const BUSY: Ending = (CallOutcome::Busy, None);
pub(super) const NO_ANSWER: Ending = (CallOutcome::NoAnswer, None);
pub(super) const DECLINED: Ending = (CallOutcome::Rejected, Some(Party::User));
pub(super) const FAILED: Ending = (CallOutcome::Failed, None);
pub(super) const UNKNOWN: Ending = (CallOutcome::Unknown, None);

/// The canonical `call` of an ended call: `reason` is the vendor's, kept verbatim.
pub(super) fn call(ending: Ending, reason: Option<&str>, duration: Option<Number>) -> Call {
    Call {
        outcome: ending.0,
        ended_by: ending.1,
        vendor_status: reason.map(str::to_owned),
        duration_seconds: duration,
    }
}

/// The customer's number and the agent's, from a call's `from` and `to` by its direction.
pub(super) fn parties(
    direction: Option<Direction>,
    from: Option<&str>,
    to: Option<&str>,
) -> (Option<Customer>, Option<String>) {
    let (customer, agent) = match direction {
        Some(Direction::Inbound) => (from, to),
        Some(Direction::Outbound) => (to, from),
        None => (None, None),
    };
    (
        customer.map(|n| Customer {
            phone_number: Some(n.to_owned()),
        }),
        agent.map(str::to_owned),
    )
}

/// The instant `seconds` after `start` (a vendor's offsets from a call's start).
pub(super) fn after(start: Timestamp, seconds: f64) -> Timestamp {
    start.plus_millis((seconds * 1000.0).round() as i64)
}

/// A duration in seconds from milliseconds (Retell's `duration_ms`).
pub(super) fn seconds_from_millis(ms: &Number) -> Option<Number> {
    ms.as_f64().and_then(|ms| Number::from_f64(ms / 1000.0))
}

/// A vendor's speaker as a canonical role; `None` for one it does not document (the turn is
/// left out of the transcript; `raw` keeps it).
pub(super) fn role(vendor_role: &str) -> Option<Role> {
    match vendor_role {
        "user" | "customer" | "transfer_target" => Some(Role::User),
        "agent" | "assistant" | "bot" | "ai" => Some(Role::Assistant),
        "tool" | "tool_calls" | "tool_call_result" | "tool_call_invocation" | "function" => {
            Some(Role::Tool)
        }
        "system" => Some(Role::System),
        _ => None,
    }
}

/// One turn of a payload's conversation, before it is numbered.
pub(super) struct Turn {
    pub id: Option<String>,
    pub role: Role,
    pub content: String,
    pub at: Option<Timestamp>,
    pub tool_call: Option<Value>,
}

/// The transcript of a payload's array of turns at `path` (`None` when there is none):
/// each turn must be an object, which `read` turns into a [`Turn`] (`None` for one of a
/// speaker the vendor does not document, left out). Errors name the turn's full path.
pub(super) fn transcript_of(
    turns: Option<&Vec<Value>>,
    path: &str,
    read: impl Fn(&Fields<'_>) -> Result<Option<Turn>, PayloadError>,
) -> Result<Option<Transcript>, PayloadError> {
    let Some(turns) = turns else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for (index, turn) in turns.iter().enumerate() {
        let at = format!("{path}.{index}");
        let Value::Object(turn) = turn else {
            return Err(PayloadError::WrongType {
                field: at,
                expected: "an object",
            });
        };
        if let Some(turn) = read(&Fields::at(turn, &at))? {
            out.push((index, turn));
        }
    }
    Ok(Some(transcript(out)))
}

/// A complete transcript of `turns`; a turn without an id of its own is named by its
/// index among the payload's turns.
fn transcript(turns: impl IntoIterator<Item = (usize, Turn)>) -> Transcript {
    Transcript {
        status: TranscriptStatus::Complete,
        reason: None,
        messages: turns
            .into_iter()
            .map(|(index, turn)| TranscriptMessage {
                id: turn.id.unwrap_or_else(|| index.to_string()),
                role: turn.role,
                content: turn.content,
                at: turn.at,
                tool_call: turn.tool_call,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_customer_is_the_far_end_of_the_call() {
        let (customer, agent) = parties(Some(Direction::Outbound), Some("+1a"), Some("+1c"));
        assert_eq!(customer.unwrap().phone_number.as_deref(), Some("+1c"));
        assert_eq!(agent.as_deref(), Some("+1a"));
        let (customer, agent) = parties(Some(Direction::Inbound), Some("+1c"), Some("+1a"));
        assert_eq!(customer.unwrap().phone_number.as_deref(), Some("+1c"));
        assert_eq!(agent.as_deref(), Some("+1a"));
        assert_eq!(parties(None, Some("+1"), Some("+2")), (None, None));
    }

    #[test]
    fn speakers_map_to_the_four_roles() {
        for (vendor, role_) in [
            ("user", Some(Role::User)),
            ("agent", Some(Role::Assistant)),
            ("bot", Some(Role::Assistant)),
            ("assistant", Some(Role::Assistant)),
            ("tool_call_result", Some(Role::Tool)),
            ("system", Some(Role::System)),
            ("narrator", None),
        ] {
            assert_eq!(role(vendor), role_, "{vendor}");
        }
    }
}
