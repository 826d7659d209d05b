//! `recover = { api_key, interval, lookback, api_url, account_sid, settle }` of a source
//! (the recovery itself: [`crate::recovery`]).

use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

use crate::settings::{ConfigError, Context, invalid, parse_duration_in};
use crate::vendors::Vendor;

/// How a source recovers the calls its vendor never sent, from the vendor's list API.
pub struct Recover {
    /// The vendor's API (its public one unless `api_url` says otherwise), without a
    /// trailing slash.
    pub api_url: reqwest::Url,
    pub api_key: SecretString,
    /// Twilio's API is per account: the Account SID (also the Basic user name).
    pub account_sid: Option<String>,
    /// How often it polls.
    pub interval: Duration,
    /// How far back its first poll looks.
    pub lookback: Duration,
    /// How long after a call's end a poll leaves it to its webhooks (`settle`); `None`:
    /// the source's finalize wait, and at least a minute.
    pub settle: Option<Duration>,
}

impl std::fmt::Debug for Recover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recover")
            .field(
                "api_url",
                &crate::settings::redact_url(self.api_url.as_str()),
            )
            .field("account_sid", &self.account_sid)
            .field("interval", &self.interval)
            .field("lookback", &self.lookback)
            .field("settle", &self.settle)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRecover {
    api_key: String,
    #[serde(default = "default_interval")]
    interval: String,
    #[serde(default = "default_lookback")]
    lookback: String,
    api_url: Option<String>,
    account_sid: Option<String>,
    settle: Option<String>,
}

fn default_interval() -> String {
    "5m".into()
}

fn default_lookback() -> String {
    "24h".into()
}

/// The vendor's public API, for the vendors that publish a list of their calls.
pub fn public_api(vendor: Vendor) -> Option<&'static str> {
    match vendor {
        Vendor::Retell => Some("https://api.retellai.com"),
        Vendor::Vapi => Some("https://api.vapi.ai"),
        Vendor::ElevenLabs => Some("https://api.elevenlabs.io"),
        Vendor::Bland => Some("https://api.bland.ai"),
        Vendor::Twilio => Some("https://api.twilio.com"),
        Vendor::Pathors | Vendor::Agntix | Vendor::Mapped => None,
    }
}

impl Recover {
    pub fn parse(
        key: &str,
        vendor: Vendor,
        raw: RawRecover,
        cx: &mut Context,
    ) -> Result<Recover, ConfigError> {
        let Some(public) = public_api(vendor) else {
            return Err(invalid(
                key,
                format!(
                    "{vendor} publishes no API that lists its calls, so there is nothing to recover from; recovery is for retell, vapi, elevenlabs, bland and twilio"
                ),
            ));
        };
        let url = match &raw.api_url {
            Some(url) => cx.reference(&format!("{key}.api_url"), url)?,
            None => public.to_owned(),
        };
        let api_url =
            super::settings::http_url(&format!("{key}.api_url"), url.trim_end_matches('/'))?;
        let api_key = SecretString::from(cx.secret(&format!("{key}.api_key"), &raw.api_key)?);
        let account_sid = match (vendor, &raw.account_sid) {
            (Vendor::Twilio, Some(sid)) => {
                let sid = cx.reference(&format!("{key}.account_sid"), sid)?;
                if !sid.starts_with("AC") || !sid.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return Err(invalid(
                        format!("{key}.account_sid"),
                        "is a Twilio Account SID: AC followed by letters and digits",
                    ));
                }
                Some(sid)
            }
            (Vendor::Twilio, None) => {
                return Err(invalid(
                    format!("{key}.account_sid"),
                    "Twilio's call list is per account: set account_sid = \"env:TWILIO_ACCOUNT_SID\"",
                ));
            }
            (_, Some(_)) => {
                return Err(invalid(
                    format!("{key}.account_sid"),
                    format!("is for Twilio; {vendor}'s API key names its account"),
                ));
            }
            (_, None) => None,
        };
        let interval = parse_duration_in(
            &format!("{key}.interval"),
            &raw.interval,
            Duration::from_secs(1),
            Duration::from_secs(86_400),
        )?;
        let lookback = parse_duration_in(
            &format!("{key}.lookback"),
            &raw.lookback,
            Duration::from_secs(60),
            Duration::from_secs(90 * 86_400),
        )?;
        let settle = raw
            .settle
            .map(|s| {
                parse_duration_in(
                    &format!("{key}.settle"),
                    &s,
                    Duration::from_secs(1),
                    Duration::from_secs(7 * 86_400),
                )
            })
            .transpose()?;
        Ok(Recover {
            api_url,
            api_key,
            account_sid,
            interval,
            lookback,
            settle,
        })
    }
}
