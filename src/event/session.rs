//! The `session` object of a canonical event and its parts.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

use super::Timestamp;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Voice,
    Chat,
}

impl Channel {
    /// How far along a session's life this channel says it is: once any call event was
    /// seen the session is `voice`, whatever a later chat-only event says.
    pub fn lifecycle_rank(self) -> u8 {
        match self {
            Channel::Voice => 1,
            Channel::Chat => 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    Phone,
    Web,
    Whatsapp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Inbound,
    Outbound,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    Open,
    Closed,
    Expired,
}

impl SessionState {
    /// How far along a session's life this state is: an ended session never reopens.
    pub fn lifecycle_rank(self) -> u8 {
        match self {
            SessionState::Open => 0,
            SessionState::Closed | SessionState::Expired => 1,
        }
    }
}

/// What the session is known to be: the `session` object of every canonical event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    pub id: String,
    pub channel: Option<Channel>,
    pub platform: Option<Platform>,
    pub direction: Option<Direction>,
    pub state: Option<SessionState>,
    pub agent_id: Option<String>,
    pub project_id: Option<String>,
    pub started_at: Option<Timestamp>,
    pub ended_at: Option<Timestamp>,
    pub last_activity_at: Option<Timestamp>,
    pub message_count: Option<u64>,
    pub current_node_id: Option<String>,
    pub customer: Option<Customer>,
    /// The agent's own phone number (E.164), where the vendor states it.
    pub agent_number: Option<String>,
    pub variables: Map<String, Value>,
    pub extracted: Map<String, Value>,
    pub call: Option<Call>,
    pub analysis: Option<Analysis>,
    /// What the session cost, where the vendor states money.
    pub cost: Option<Cost>,
    pub recording: Option<Recording>,
    /// The conversation, where the source fetches it (Agntix `transcripts`); else null.
    pub transcript: Option<Transcript>,
}

/// `session.transcript`: the messages of a session, or why they are not there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Transcript {
    pub status: TranscriptStatus,
    /// Why it is unavailable (`unauthorized`, `not_found`, `timeout`, `http_<status>`,
    /// `invalid_answer`); absent when complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub messages: Vec<TranscriptMessage>,
}

impl Transcript {
    pub fn unavailable(reason: impl Into<String>) -> Transcript {
        Transcript {
            status: TranscriptStatus::Unavailable,
            reason: Some(reason.into()),
            messages: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TranscriptStatus {
    Complete,
    Unavailable,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TranscriptMessage {
    pub id: String,
    pub role: Role,
    pub content: String,
    pub at: Option<Timestamp>,
    /// The vendor's tool call, verbatim.
    pub tool_call: Option<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
    Tool,
    System,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Customer {
    pub phone_number: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Call {
    pub outcome: CallOutcome,
    pub ended_by: Option<Party>,
    /// The vendor's own status string, verbatim.
    pub vendor_status: Option<String>,
    pub duration_seconds: Option<Number>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallOutcome {
    Completed,
    Transferred,
    Failed,
    Voicemail,
    Busy,
    NoAnswer,
    Rejected,
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Party {
    User,
    Agent,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Analysis {
    pub summary: Option<String>,
    pub intent: Option<Intent>,
    pub sentiment: Option<Sentiment>,
    pub resolution: Option<Resolution>,
    /// The vendor's verdict on whether the call did its job; null where it gives none.
    #[serde(default)]
    pub successful: Option<bool>,
}

/// `session.cost`: money the vendor states (never credits or other units).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    pub amount: Number,
    /// ISO 4217, upper case.
    pub currency: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Intent {
    pub name: Option<String>,
    pub confidence: Option<Number>,
    pub explanation: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sentiment {
    pub label: Option<SentimentLabel>,
    pub score: Option<Number>,
    pub language: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SentimentLabel {
    Positive,
    Neutral,
    Negative,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resolution {
    pub status: Option<ResolutionStatus>,
    pub confidence: Option<Number>,
    pub satisfied_checklist_items: Vec<Value>,
    pub evidence: Vec<Value>,
    pub explanation: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResolutionStatus {
    Resolved,
    PartiallyResolved,
    Unresolved,
    NotApplicable,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Recording {
    pub status: RecordingStatus,
    pub url: Option<String>,
    pub expires_at: Option<Timestamp>,
    /// The gateway's copy of the recording (`[recordings]`); null where none was attempted.
    #[serde(default)]
    pub archive: Option<Archive>,
    /// The vendor sent the audio itself in the request's body (ElevenLabs `post_call_audio`)
    /// rather than a URL: what ingest archives is that body. Never serialised.
    #[serde(skip)]
    pub in_body: bool,
}

/// `session.recording.archive`: the recording as the gateway stored it, or why it could not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Archive {
    pub status: ArchiveStatus,
    /// Why it failed (`expired`, `too_large`, `http_<status>`, `io`); absent when archived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub url: Option<String>,
    pub sha256: Option<String>,
    pub bytes: Option<u64>,
    pub content_type: Option<String>,
    pub archived_at: Option<Timestamp>,
}

impl Archive {
    pub fn failed(reason: impl Into<String>) -> Archive {
        Archive {
            status: ArchiveStatus::Failed,
            reason: Some(reason.into()),
            url: None,
            sha256: None,
            bytes: None,
            content_type: None,
            archived_at: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArchiveStatus {
    Archived,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordingStatus {
    Ready,
    Failed,
}
