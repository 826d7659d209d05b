//! `redis://` targets: Redis Streams. Each message is one `XADD` of the fields `id`, `type`,
//! `body` (and `webhook-id`, `webhook-timestamp`, `webhook-signature` when the target has
//! a secret), with an approximate `MAXLEN` when set. Delivered when Redis has answered the
//! command. Redis 7.0 has no idempotent `XADD`, so one Lua script checks the event id
//! against the ids this stream took, adds the entry and records the id atomically: a
//! repeat (a retry after a lost answer, an admin replay) is not added again and counts as
//! delivered. The ids are kept in a sorted set beside the stream (`<stream>:sessiongate-ids`),
//! the newest `dedup_window` of them (default 100000).

use std::sync::Arc;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

use super::{Keys, Outbound, Output, OutputAnswer, Settings as OutputSettings, Signed, Template};
use crate::delivery::target::Target;
use crate::settings::{ConfigError, invalid, redact_url};

/// How many recent event ids a stream remembers, unless the target says.
pub const DEFAULT_DEDUP_WINDOW: u64 = 100_000;

/// KEYS: the stream, its ids. ARGV: event id, MAXLEN ("" = none), ids kept, then the
/// entry's field/value pairs. Returns 1 if added, 0 if the id was added before.
const XADD_ONCE: &str = r#"
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then
    return 0
end
local args = {'XADD', KEYS[1]}
if ARGV[2] ~= '' then
    table.insert(args, 'MAXLEN')
    table.insert(args, '~')
    table.insert(args, ARGV[2])
end
table.insert(args, '*')
for i = 4, #ARGV do
    table.insert(args, ARGV[i])
end
local entry = redis.call(unpack(args))
redis.call('ZADD', KEYS[2], tonumber(string.match(entry, '^(%d+)')), ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(tonumber(ARGV[3]) + 1))
return 1
"#;

/// The target keys a `redis://` target takes.
pub const KEYS: &[&str] = &["stream", "maxlen", "dedup_window"];

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub stream: Template,
    pub maxlen: Option<u64>,
    pub dedup_window: u64,
}

impl Settings {
    pub fn parse(url: &reqwest::Url, keys: &mut Keys) -> Result<OutputSettings, ConfigError> {
        if let Err(e) = redis::Client::open(url.as_str()) {
            return Err(invalid(
                keys.at("url"),
                format!("`{}` is not a Redis URL: {e}", redact_url(url.as_str())),
            ));
        }
        let stream = keys.required_string("stream")?;
        let stream = Template::parse(&keys.at("stream"), &stream)?;
        let maxlen = keys.positive("maxlen")?;
        let dedup_window = keys
            .positive("dedup_window")?
            .unwrap_or(DEFAULT_DEDUP_WINDOW);
        Ok(OutputSettings::Redis(Settings {
            stream,
            maxlen,
            dedup_window,
        }))
    }
}

pub struct RedisOutput {
    target: Arc<Target>,
    settings: Settings,
    client: redis::Client,
    /// Made on first use; it reconnects on its own afterwards.
    connection: OnceCell<ConnectionManager>,
    script: redis::Script,
}

impl RedisOutput {
    pub fn new(target: Arc<Target>, settings: Settings) -> anyhow::Result<RedisOutput> {
        let client = redis::Client::open(target.url.as_str())?;
        Ok(RedisOutput {
            target,
            settings,
            client,
            connection: OnceCell::new(),
            script: redis::Script::new(XADD_ONCE),
        })
    }

    async fn connection(&self) -> Result<ConnectionManager, String> {
        let shown = redact_url(self.target.url.as_str());
        self.connection
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.target.timeout))
                    .set_response_timeout(Some(self.target.timeout));
                ConnectionManager::new_with_config(self.client.clone(), config)
                    .await
                    .map_err(|e| format!("cannot connect to {shown}: {e}"))
            })
            .await
            .cloned()
    }
}

#[async_trait]
impl Output for RedisOutput {
    async fn send(&self, outbound: Outbound<'_>) -> OutputAnswer {
        let route = match outbound.route() {
            Ok(route) => route,
            Err(e) => return OutputAnswer::failed(e),
        };
        let stream = self.settings.stream.render(&route);
        let signed = match Signed::sign(&self.target, &outbound) {
            Ok(signed) => signed,
            Err(e) => return OutputAnswer::failed(e),
        };
        let mut connection = match self.connection().await {
            Ok(connection) => connection,
            Err(e) => return OutputAnswer::failed(e),
        };
        let mut invocation = self.script.key(&stream);
        invocation
            .key(format!("{stream}:sessiongate-ids"))
            .arg(outbound.event_id.as_str())
            .arg(
                self.settings
                    .maxlen
                    .map_or(String::new(), |n| n.to_string()),
            )
            .arg(self.settings.dedup_window)
            .arg("id")
            .arg(outbound.event_id.as_str())
            .arg("type")
            .arg(&route.event_type)
            .arg("body")
            .arg(&outbound.body[..]);
        if let Some(signed) = &signed {
            for (name, value) in signed.pairs() {
                invocation.arg(name).arg(value);
            }
        }
        let added = tokio::time::timeout(
            self.target.timeout,
            invocation.invoke_async::<i64>(&mut connection),
        )
        .await;
        match added {
            // 0: added before; the stream has it, once.
            Ok(Ok(_)) => OutputAnswer::delivered(),
            Ok(Err(e)) => OutputAnswer::failed(format!("XADD to `{stream}` failed: {e}")),
            Err(_) => OutputAnswer::failed(format!(
                "no answer from Redis for `{stream}` within {} ms",
                self.target.timeout.as_millis()
            )),
        }
    }
}
