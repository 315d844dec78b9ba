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

use super::{slots, RedisBroker};
use crate::broker::{Append, Broker as _};
use crate::kv::{Commit, Outcome};

/// The script. `ARGV[1]` is the number of calls, `ARGV[2]` `~` or `=` for
/// `MAXLEN`, `ARGV[3]` the number of sources (a stream, group and consumer
/// whose entries the batch acknowledges); then per source: its stream
/// (index into `KEYS`), group, consumer, and the lowest and highest entry
/// id the batch acknowledges for it with how many entries that is; then
/// per call: its source (index among the sources; 0 for none: no custody
/// check, no ack), entry id, and its idempotency mark (index into `KEYS`, 0
/// for none) with its time to live in ms; its reads (count, then bucket
/// index, key, `0`/`1` for absent/present, value); its writes (count, then
/// bucket index, key, `0`/`1` for delete/set, value); its appends (count,
/// then stream index, `MAXLEN`, field count, fields and values). One reply
/// per call: `ok`, `notheld`, `duplicate`, `conflict <read number>`, or
/// `failed <reason>`.
///
/// Where the server's time goes (`INFO commandstats`, 1000-key counter
/// bench, 55 000 commits): with a custody `XPENDING` and a `TYPE` per read
/// and write for every call, the script cost 12.4 µs per call, of which
/// the commands themselves were 2.9 µs: the rest was the script's own work
/// per `redis.call` and per argument. Hence one `XPENDING` per source for
/// the whole batch, types looked up once per key, and the group and
/// consumer sent once per source rather than per call.
const COMMIT: &str = r#"#!lua
local n, approx, nsources = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local i = 4
local replies = {}
-- Custody for the whole batch: one XPENDING per source over the range of
-- its entries, filtered to its consumer. Later commands in this script do
-- not move entries between consumers; an entry acknowledged earlier in the
-- batch is remembered in `acked`.
local sources = {}
for s = 1, nsources do
  local src = {key = KEYS[tonumber(ARGV[i])], group = ARGV[i + 1], consumer = ARGV[i + 2],
    held = {}, acked = {}, acks = {}}
  local count = tonumber(ARGV[i + 5])
  local p = redis.pcall('XPENDING', src.key, src.group, ARGV[i + 3], ARGV[i + 4], count, src.consumer)
  if type(p) == 'table' and p['err'] then
    src.err = p['err']
  else
    for _, e in ipairs(p) do src.held[e[1]] = true end
    -- A full reply may have left some of the batch's entries out: those
    -- are looked up one by one.
    src.full = #p >= count
  end
  sources[s] = src
  i = i + 6
end
local function holds(src, id)
  if src.acked[id] then return false end
  if src.held[id] then return true end
  if not src.full then return false end
  local p = redis.call('XPENDING', src.key, src.group, id, id, 1)
  return #p > 0 and p[1][2] == src.consumer
end
-- Types looked up once per key, kept up to date as the script writes.
local types = {}
local function type_is(key, a)
  local t = types[key]
  if not t then
    t = redis.call('TYPE', key)['ok']
    types[key] = t
  end
  return t == a or t == 'none'
end
for c = 1, n do
  local src, id = sources[tonumber(ARGV[i])], ARGV[i + 1]
  local mark, markttl = KEYS[tonumber(ARGV[i + 2])], ARGV[i + 3]
  i = i + 4
  local verdict = nil
  if src then
    if src.err then
      -- A vanished group is created again by the subscriber, and the
      -- entry may be delivered again: applying now could apply it twice.
      if string.find(src.err, 'NOGROUP', 1, true) then
        verdict = 'notheld'
      else
        verdict = 'failed ' .. src.err
      end
    elseif not holds(src, id) then
      verdict = 'notheld'
    end
  end
  if not verdict and mark and redis.call('EXISTS', mark) == 1 then
    -- Handled already (another entry of the same event): acknowledge only.
    if src then
      src.acked[id] = true
      src.acks[#src.acks + 1] = id
    end
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
        types[bucket] = 'hash'
      else
        redis.call('HDEL', bucket, ARGV[w + 1])
        -- The last field deleted deletes the hash.
        types[bucket] = nil
      end
    end
    local a = appends
    for _ = 1, nappends do
      local nfields = tonumber(ARGV[a + 2])
      local stream = KEYS[tonumber(ARGV[a])]
      local cmd = {'XADD', stream, 'MAXLEN', approx, ARGV[a + 1], '*'}
      for f = a + 3, a + 2 + 2 * nfields do cmd[#cmd + 1] = ARGV[f] end
      redis.call(unpack(cmd))
      types[stream] = 'stream'
      a = a + 3 + 2 * nfields
    end
    if src then
      src.acked[id] = true
      src.acks[#src.acks + 1] = id
    end
    if mark then
      redis.call('SET', mark, '1', 'PX', markttl)
      types[mark] = 'string'
    end
    verdict = 'ok'
  end
  replies[c] = verdict
end
-- One XACK per source at the end (an XACK per commit cost 2 µs of the
-- server's time). Later checks in this script use `acked`, so the order
-- is safe.
for _, src in ipairs(sources) do
  if #src.acks > 0 then redis.call('XACK', src.key, src.group, unpack(src.acks)) end
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
    let sources = Sources::of(commits);
    inv.arg(commits.len())
        .arg(if approximate { "~" } else { "=" })
        .arg(sources.list.len());
    for s in &sources.list {
        inv.arg(keys.index(s.stream))
            .arg(s.group)
            .arg(s.consumer)
            .arg(s.range.first())
            .arg(s.range.last())
            .arg(s.entries * 2 + 16);
    }
    for (c, source) in commits.iter().zip(&sources.of_commit) {
        match &c.source {
            Some(s) => inv.arg(*source).arg(&s.id),
            None => inv.arg(0).arg(""),
        };
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

/// The sources of a batch: each stream, group and consumer whose entries
/// it acknowledges, once, with the range of those entries (the script
/// checks custody with one `XPENDING` per source).
struct Sources<'c> {
    list: Vec<SourceRange<'c>>,
    /// Each commit's source, as the script numbers them (1-based; 0: none).
    of_commit: Vec<usize>,
}

struct SourceRange<'c> {
    stream: &'c str,
    group: &'c str,
    consumer: &'c str,
    range: IdRange,
    entries: usize,
}

impl<'c> Sources<'c> {
    fn of(commits: &'c [Commit]) -> Sources<'c> {
        let mut list: Vec<SourceRange<'c>> = Vec::new();
        let mut of_commit = Vec::with_capacity(commits.len());
        for c in commits {
            let Some(s) = &c.source else {
                of_commit.push(0);
                continue;
            };
            let at = list.iter().position(|r| {
                r.stream == s.stream && r.group == s.group && r.consumer == s.consumer
            });
            let ix = match at {
                Some(ix) => ix,
                None => {
                    list.push(SourceRange {
                        stream: &s.stream,
                        group: &s.group,
                        consumer: &s.consumer,
                        range: IdRange::default(),
                        entries: 0,
                    });
                    list.len() - 1
                }
            };
            list[ix].range.include(&s.id);
            list[ix].entries += 1;
            of_commit.push(ix + 1);
        }
        Sources { list, of_commit }
    }
}

/// The lowest and highest of some stream entry ids (`<ms>-<seq>`, compared
/// as numbers, as Redis orders them); the whole stream (`-` to `+`) once an
/// id does not parse, so that no entry is left out of the range.
#[derive(Default)]
struct IdRange {
    bounds: Option<((u64, u64), (u64, u64))>,
    whole: bool,
}

impl IdRange {
    fn include(&mut self, id: &str) {
        let parsed = id
            .split_once('-')
            .and_then(|(ms, seq)| Some((ms.parse().ok()?, seq.parse().ok()?)));
        match (parsed, &mut self.bounds) {
            (None, _) => self.whole = true,
            (Some(id), None) => self.bounds = Some((id, id)),
            (Some(id), Some((low, high))) => {
                *low = (*low).min(id);
                *high = (*high).max(id);
            }
        }
    }

    fn first(&self) -> String {
        match self.bounds {
            Some(((ms, seq), _)) if !self.whole => format!("{ms}-{seq}"),
            _ => "-".to_string(),
        }
    }

    fn last(&self) -> String {
        match self.bounds {
            Some((_, (ms, seq))) if !self.whole => format!("{ms}-{seq}"),
            _ => "+".to_string(),
        }
    }
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

impl RedisBroker {
    /// [`crate::broker::Broker::commit`] on Redis: one script for a server; on a cluster,
    /// one script per slot, each commit whose keys span slots refused.
    pub(super) async fn commit_batch(
        &self,
        commits: &[crate::kv::Commit],
    ) -> anyhow::Result<Vec<crate::kv::Outcome>> {
        if commits.is_empty() {
            return Ok(Vec::new());
        }
        if !self.is_cluster() {
            return self.commit_in_one_slot(commits).await;
        }
        // A script runs on one master, on keys of one slot: one batch per
        // slot, in order within it (a later commit sees an earlier one's
        // writes: they share keys, hence the slot). A commit whose keys
        // span slots cannot be one atomic step there.
        let mut outcomes: Vec<Option<crate::kv::Outcome>> = vec![None; commits.len()];
        let mut batches: Vec<(u16, Vec<usize>)> = Vec::new();
        let mut in_slot: Vec<crate::kv::Commit> = commits.to_vec();
        let mut elsewhere: Vec<Append> = Vec::new();
        for (i, c) in in_slot.iter_mut().enumerate() {
            // Emits to streams outside the commit's slot (that of its
            // source, marks and buckets) cannot be in its script: they are
            // appended first, at least once, as a plugin without state
            // emits (a rerun after a conflict, or a crash before the
            // commit, may append them again).
            if let Some(home) = home_key(c).map(slots::slot_of) {
                let (here, away): (Vec<Append>, Vec<Append>) = std::mem::take(&mut c.appends)
                    .into_iter()
                    .partition(|a| slots::slot_of(&a.stream) == home);
                c.appends = here;
                elsewhere.extend(away);
            }
            let keys = keys(c);
            let mut slots_used: Vec<u16> = keys.iter().map(|k| slots::slot_of(k)).collect();
            slots_used.sort_unstable();
            slots_used.dedup();
            match slots_used.as_slice() {
                [] => outcomes[i] = Some(crate::kv::Outcome::Committed),
                [slot] => match batches.iter_mut().find(|(s, _)| s == slot) {
                    Some((_, batch)) => batch.push(i),
                    None => batches.push((*slot, vec![i])),
                },
                _ => {
                    outcomes[i] = Some(crate::kv::Outcome::Failed(format!(
                        "on a Redis Cluster a commit's keys must share a hash slot, and these do not: {}; give the streams one hash tag (e.g. {{orders}} and {{orders}}.enriched) and see \"Running on Redis Cluster\" in the README",
                        keys.iter()
                            .map(|k| format!("{k} (slot {})", slots::slot_of(k)))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )))
                }
            }
        }
        if !elsewhere.is_empty() {
            self.append(elsewhere).await?;
        }
        let in_slot = &in_slot;
        let sent = batches.iter().map(|(_, batch)| async move {
            let part: Vec<crate::kv::Commit> = batch.iter().map(|&i| in_slot[i].clone()).collect();
            let done = self.commit_in_one_slot(&part).await?;
            anyhow::Ok(batch.iter().copied().zip(done))
        });
        for done in futures_util::future::try_join_all(sent).await? {
            for (i, outcome) in done {
                outcomes[i] = Some(outcome);
            }
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.expect("every commit has an outcome"))
            .collect())
    }

    /// Commits whose keys are all in one slot (on a server, any), in one
    /// script.
    pub(super) async fn commit_in_one_slot(
        &self,
        commits: &[crate::kv::Commit],
    ) -> anyhow::Result<Vec<crate::kv::Outcome>> {
        let invocation = invocation(commits, self.trimming.approximate, |s| self.max_len(s));
        let reply: Value = invocation
            .invoke_async(&mut self.commands())
            .await
            .map_err(|e| self.error(e, "committing key-value writes".into(), None))?;
        outcomes(commits, reply)
    }
}

#[cfg(test)]
mod tests {
    use super::IdRange;

    #[test]
    fn an_id_range_orders_ids_as_numbers_and_widens_to_the_stream_on_a_stranger() {
        let mut range = IdRange::default();
        for id in [
            "1700000000123-9",
            "1700000000123-10",
            "999-0",
            "1700000000124-0",
        ] {
            range.include(id);
        }
        assert_eq!(range.first(), "999-0");
        assert_eq!(range.last(), "1700000000124-0");
        range.include("not-an-id");
        assert_eq!((range.first().as_str(), range.last().as_str()), ("-", "+"));
    }
}
