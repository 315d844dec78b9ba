//! Key-value commits on Redis: a batch of successful calls made durable by
//! one Lua script, each call all or nothing.
//!
//! Why a script rather than `WATCH`/`MULTI`/`EXEC`: `WATCH` belongs to a
//! connection (the multiplexed one cannot hold it), cannot check who holds
//! a pending entry, and watching a busy source stream would abort on every
//! producer's `XADD`. The script checks everything a call depends on before
//! it writes anything, so an error cannot leave a call half applied; the
//! `#!lua` shebang makes Redis 7 refuse the whole script up front when it is
//! out of memory (`noeviction`), rather than fail half-way. Replicas and the
//! AOF receive a script's effects as one `MULTI`/`EXEC`: a truncated AOF
//! loses a commit whole, and its event is delivered again.
//!
//! Every key the script touches is passed in `KEYS` (deduplicated), so that
//! a Redis Cluster can route it when all of them share a slot.

use std::collections::HashMap;

use redis::Value;

use crate::kv::{Commit, Outcome};

/// The script. `ARGV[1]` is the number of calls, `ARGV[2]` `~` or `=` for
/// `MAXLEN`; then per call: its source stream (index into `KEYS`; 0 for
/// none: no custody check, no ack), group, consumer, entry id, and its
/// idempotency mark (index into `KEYS`, 0 for none) with its time to live
/// in ms; its reads (count, then bucket index, key, `0`/`1`
/// for absent/present, value); its writes (count, then bucket index, key,
/// `0`/`1` for delete/set, value); its appends (count, then stream index,
/// `MAXLEN`, field count, fields and values). One reply per call: `ok`,
/// `notheld`, `duplicate`, `conflict <read number>`, or `failed <reason>`.
const COMMIT: &str = r#"#!lua
local n, approx = tonumber(ARGV[1]), ARGV[2]
local i = 3
local replies = {}
-- Acks are gathered per stream and group and sent at the end, one XACK
-- each (an XACK per commit cost 2 µs of the server's time). Later checks
-- in this script look only at their own entries, so the order is safe.
local acks, ackorder, acked = {}, {}, {}
local function ack(src, group, id)
  acked[src .. '\0' .. group .. '\0' .. id] = true
  local k = src .. '\0' .. group
  if not acks[k] then
    acks[k] = {src, group}
    ackorder[#ackorder + 1] = k
  end
  local a = acks[k]
  a[#a + 1] = id
end
local function type_is(key, a)
  local t = redis.call('TYPE', key)['ok']
  return t == a or t == 'none'
end
for c = 1, n do
  local srcix = tonumber(ARGV[i])
  local src, group, consumer, id = KEYS[srcix], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local mark, markttl = KEYS[tonumber(ARGV[i + 4])], ARGV[i + 5]
  i = i + 6
  local verdict = nil
  if src then
    local p = redis.pcall('XPENDING', src, group, id, id, 1)
    if type(p) == 'table' and p['err'] then
      -- A vanished group is created again by the subscriber, and the
      -- entry may be delivered again: applying now could apply it twice.
      if string.find(p['err'], 'NOGROUP', 1, true) then
        verdict = 'notheld'
      else
        verdict = 'failed ' .. p['err']
      end
    elseif #p == 0 or p[1][2] ~= consumer or acked[src .. '\0' .. group .. '\0' .. id] then
      verdict = 'notheld'
    end
  end
  if not verdict and mark and redis.call('EXISTS', mark) == 1 then
    -- Handled already (another entry of the same event): acknowledge only.
    if src then ack(src, group, id) end
    verdict = 'duplicate'
  end
  local nreads = tonumber(ARGV[i]); i = i + 1
  for r = 1, nreads do
    if not verdict then
      local bucket = KEYS[tonumber(ARGV[i])]
      if not type_is(bucket, 'hash') then
        verdict = 'failed key ' .. bucket .. ' is not a hash'
      else
        local now = redis.call('HGET', bucket, ARGV[i + 1])
        local was = ARGV[i + 2] == '1' and ARGV[i + 3] or false
        if now ~= was then verdict = 'conflict ' .. r end
      end
    end
    i = i + 4
  end
  local nwrites = tonumber(ARGV[i]); i = i + 1
  local writes = i
  i = i + 4 * nwrites
  local nappends = tonumber(ARGV[i]); i = i + 1
  local appends = i
  for a = 1, nappends do
    local stream = KEYS[tonumber(ARGV[i])]
    if not verdict and not type_is(stream, 'stream') then
      verdict = 'failed key ' .. stream .. ' is not a stream'
    end
    i = i + 3 + 2 * tonumber(ARGV[i + 2])
  end
  if not verdict then
    for w = writes, writes + 4 * (nwrites - 1), 4 do
      local bucket = KEYS[tonumber(ARGV[w])]
      if not type_is(bucket, 'hash') then
        verdict = 'failed key ' .. bucket .. ' is not a hash'
      end
    end
  end
  if not verdict then
    for w = writes, writes + 4 * (nwrites - 1), 4 do
      local bucket = KEYS[tonumber(ARGV[w])]
      if ARGV[w + 2] == '1' then
        redis.call('HSET', bucket, ARGV[w + 1], ARGV[w + 3])
      else
        redis.call('HDEL', bucket, ARGV[w + 1])
      end
    end
    local a = appends
    for _ = 1, nappends do
      local nfields = tonumber(ARGV[a + 2])
      local cmd = {'XADD', KEYS[tonumber(ARGV[a])], 'MAXLEN', approx, ARGV[a + 1], '*'}
      for f = a + 3, a + 2 + 2 * nfields do cmd[#cmd + 1] = ARGV[f] end
      redis.call(unpack(cmd))
      a = a + 3 + 2 * nfields
    end
    if src then ack(src, group, id) end
    if mark then redis.call('SET', mark, '1', 'PX', markttl) end
    verdict = 'ok'
  end
  replies[c] = verdict
end
for _, k in ipairs(ackorder) do
  local a = acks[k]
  redis.call('XACK', unpack(a))
end
return replies
"#;

/// The script, loaded once per process (redis-rs sends `EVALSHA` and falls
/// back to `EVAL` when Redis has not seen it, after a restart say).
pub(super) fn script() -> &'static redis::Script {
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| redis::Script::new(COMMIT))
}

/// The key that decides a commit's slot on a Redis Cluster: its source
/// stream, else its mark, else its first bucket; `None` for a commit
/// that only appends.
pub(super) fn home_key(commit: &Commit) -> Option<&str> {
    let source = commit.source.as_ref().map(|s| s.stream.as_str());
    let mark = commit.mark.as_ref().map(|m| m.key.as_str());
    let reads = commit.effects.reads.iter().map(|r| r.bucket.as_str());
    let writes = commit.effects.writes.iter().map(|w| w.bucket.as_str());
    source.or(mark).or_else(|| reads.chain(writes).next())
}

/// Every key `commit` touches, each once, in the order the script's
/// `KEYS` lists them: on a Redis Cluster they must share a slot.
pub(super) fn keys(commit: &Commit) -> Vec<&str> {
    let mut keys = Keys::default();
    if let Some(source) = &commit.source {
        keys.index(&source.stream);
    }
    if let Some(mark) = &commit.mark {
        keys.index(&mark.key);
    }
    for r in &commit.effects.reads {
        keys.index(&r.bucket);
    }
    for w in &commit.effects.writes {
        keys.index(&w.bucket);
    }
    for a in &commit.appends {
        keys.index(&a.stream);
    }
    keys.names
}

/// Builds the script's invocation for `commits`; `max_len` gives each
/// stream's `MAXLEN`.
pub(super) fn invocation(
    commits: &[Commit],
    approximate: bool,
    max_len: impl Fn(&str) -> u64,
) -> redis::ScriptInvocation<'static> {
    let mut keys = Keys::default();
    let mut inv = script().prepare_invoke();
    inv.arg(commits.len())
        .arg(if approximate { "~" } else { "=" });
    for c in commits {
        match &c.source {
            Some(source) => {
                let src = keys.index(&source.stream);
                inv.arg(src)
                    .arg(&source.group)
                    .arg(&source.consumer)
                    .arg(&source.id);
            }
            None => {
                inv.arg(0).arg("").arg("").arg("");
            }
        }
        match &c.mark {
            Some(mark) => {
                let ix = keys.index(&mark.key);
                inv.arg(ix).arg(mark.ttl.as_millis().max(1) as u64);
            }
            None => {
                inv.arg(0).arg(0);
            }
        }
        inv.arg(c.effects.reads.len());
        for r in &c.effects.reads {
            let b = keys.index(&r.bucket);
            inv.arg(b).arg(&r.key);
            match &r.value {
                Some(v) => inv.arg("1").arg(v.as_slice()),
                None => inv.arg("0").arg(""),
            };
        }
        inv.arg(c.effects.writes.len());
        for w in &c.effects.writes {
            let b = keys.index(&w.bucket);
            inv.arg(b).arg(&w.key);
            match &w.value {
                Some(v) => inv.arg("1").arg(v.as_slice()),
                None => inv.arg("0").arg(""),
            };
        }
        inv.arg(c.appends.len());
        for a in &c.appends {
            let s = keys.index(&a.stream);
            inv.arg(s).arg(max_len(&a.stream)).arg(a.fields.len());
            for (field, value) in &a.fields {
                inv.arg(field).arg(value.as_slice());
            }
        }
    }
    for k in keys.names {
        inv.key(k);
    }
    inv
}

/// The script's `KEYS`, each name once, in order of first use.
#[derive(Default)]
struct Keys<'c> {
    names: Vec<&'c str>,
    index: HashMap<&'c str, usize>,
}

impl<'c> Keys<'c> {
    /// The 1-based index (Lua's) of `name` in `KEYS`.
    fn index(&mut self, name: &'c str) -> usize {
        *self.index.entry(name).or_insert_with(|| {
            self.names.push(name);
            self.names.len()
        })
    }
}

/// Reads the script's replies, one per commit, with the names of the
/// keys a conflict was found on.
pub(super) fn outcomes(commits: &[Commit], reply: Value) -> anyhow::Result<Vec<Outcome>> {
    let Value::Array(items) = reply else {
        anyhow::bail!("commit script answered {reply:?}, not a list");
    };
    if items.len() != commits.len() {
        anyhow::bail!(
            "commit script answered {} outcomes for {} commits",
            items.len(),
            commits.len()
        );
    }
    items
        .into_iter()
        .zip(commits)
        .map(|(item, commit)| {
            let text: String = redis::from_redis_value(item)
                .map_err(|e| anyhow::anyhow!("commit script reply: {e}"))?;
            Ok(match text.split_once(' ') {
                None if text == "ok" => Outcome::Committed,
                None if text == "notheld" => Outcome::NotHeld,
                None if text == "duplicate" => Outcome::Duplicate,
                Some(("conflict", n)) => {
                    let read = n
                        .parse::<usize>()
                        .ok()
                        .and_then(|n| commit.effects.reads.get(n.checked_sub(1)?))
                        .ok_or_else(|| anyhow::anyhow!("commit script reply {text:?}"))?;
                    Outcome::Conflict {
                        bucket: read.bucket.clone(),
                        key: read.key.clone(),
                    }
                }
                Some(("failed", reason)) => Outcome::Failed(reason.to_string()),
                _ => anyhow::bail!("commit script reply {text:?}"),
            })
        })
        .collect()
}
