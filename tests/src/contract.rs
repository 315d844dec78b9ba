//! The broker contract: the Redis Streams model that the subscriber relies
//! on, written once as checks that every backend must pass (the way
//! wasmtime's test programs run every guest through every suite).
//! `tests/tests/all/contract.rs` instantiates each check for each backend with
//! `broker_contract!`.
//!
//! Every check takes a fresh broker and a name prefix of its own, so that
//! backends shared between tests (the machine's Redis) never mix.

use std::sync::Arc;
use std::time::Duration;

use runnel::broker::{Append, Broker, GroupCreated, MissingGroup, StartFrom};

/// A backend under test: a broker and a prefix for its names.
pub struct Subject {
    pub broker: Arc<dyn Broker>,
    pub prefix: String,
}

impl Subject {
    fn name(&self, what: &str) -> String {
        format!("{}-{what}", self.prefix)
    }

    /// A name with the subject's hash tag: names that must commit together
    /// share a slot on a Redis Cluster (and mean the same elsewhere).
    fn tagged(&self, what: &str) -> String {
        format!("{{{}}}-{what}", self.prefix)
    }

    async fn add(&self, stream: &str, values: &[&str]) -> Vec<String> {
        let appends = values
            .iter()
            .map(|v| Append {
                stream: stream.to_string(),
                fields: vec![("event".to_string(), v.as_bytes().to_vec())],
            })
            .collect();
        self.broker.append(appends).await.unwrap()
    }

    async fn read(&self, group: &str, consumer: &str, stream: &str, count: usize) -> Vec<String> {
        self.broker
            .read(group, consumer, &[stream.to_string()], count, NO_WAIT)
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.entry.id)
            .collect()
    }
}

/// A read that does not wait.
const NO_WAIT: Duration = Duration::ZERO;

/// Entries come back in the order they were appended, ids increasing, each
/// with its fields in order.
pub async fn appends_keep_their_order(s: Subject) {
    let stream = s.name("order");
    let ids = s.add(&stream, &["a", "b", "c"]).await;
    let mut sorted = ids.clone();
    sorted.sort_by_key(|id| runnel::broker::parse_entry_id(id).unwrap());
    assert_eq!(ids, sorted, "ids increase");
    let entries = s.broker.range(&stream, None, None, 10).await.unwrap();
    let values: Vec<&[u8]> = entries.iter().map(|e| e.fields[0].1.as_slice()).collect();
    assert_eq!(values, vec![b"a", b"b", b"c"]);
    assert_eq!(
        entries.iter().map(|e| &e.id).collect::<Vec<_>>(),
        ids.iter().collect::<Vec<_>>()
    );
}

/// `New` starts after what is on the stream and says how much it skips;
/// `Beginning` starts at the first entry; creating again changes nothing.
pub async fn groups_start_where_asked(s: Subject) {
    let stream = s.name("start");
    s.add(&stream, &["old1", "old2"]).await;
    let new = s
        .broker
        .create_group(&stream, "new", StartFrom::New)
        .await
        .unwrap();
    assert_eq!(new, GroupCreated::Created { skipped: 2 });
    let all = s
        .broker
        .create_group(&stream, "all", StartFrom::Beginning)
        .await
        .unwrap();
    assert_eq!(all, GroupCreated::Created { skipped: 0 });
    let again = s
        .broker
        .create_group(&stream, "all", StartFrom::New)
        .await
        .unwrap();
    assert_eq!(again, GroupCreated::Existed);
    s.add(&stream, &["fresh"]).await;
    assert_eq!(s.read("new", "c", &stream, 10).await.len(), 1);
    assert_eq!(s.read("all", "c", &stream, 10).await.len(), 3);
}

/// A group created after an id starts after it.
pub async fn a_group_can_start_after_an_entry(s: Subject) {
    let stream = s.name("after");
    let ids = s.add(&stream, &["1", "2", "3"]).await;
    s.broker
        .create_group(&stream, "g", StartFrom::After(ids[1].clone()))
        .await
        .unwrap();
    assert_eq!(s.read("g", "c", &stream, 10).await, vec![ids[2].clone()]);
}

/// A read makes entries pending for that consumer: they are not read again
/// by anyone, and the backlog counts them until acknowledged.
pub async fn reads_make_entries_pending_until_acked(s: Subject) {
    let stream = s.name("pending");
    s.broker
        .create_group(&stream, "g", StartFrom::Beginning)
        .await
        .unwrap();
    s.add(&stream, &["1", "2", "3"]).await;
    let first = s.read("g", "c1", &stream, 2).await;
    assert_eq!(first.len(), 2);
    let rest = s.read("g", "c2", &stream, 10).await;
    assert_eq!(rest.len(), 1);
    assert!(!first.contains(&rest[0]));
    assert!(
        s.read("g", "c1", &stream, 10).await.is_empty(),
        "nothing new"
    );
    assert_eq!(s.broker.backlog(&stream, "g").await.unwrap(), 3);
    s.broker.ack("g", &stream, &first).await.unwrap();
    assert_eq!(s.broker.backlog(&stream, "g").await.unwrap(), 1);
    // Acking what is not pending is a no-op, not an error.
    s.broker.ack("g", &stream, &first).await.unwrap();
    assert_eq!(s.broker.backlog(&stream, "g").await.unwrap(), 1);
}

/// Entries idle longer than the threshold are taken over by another
/// consumer, with their delivery counter incremented; recent ones are not.
/// The claim follows the pending list to its end, up to `count`.
pub async fn idle_entries_are_reclaimed_with_their_deliveries_counted(s: Subject) {
    let stream = s.name("claim");
    s.broker
        .create_group(&stream, "g", StartFrom::Beginning)
        .await
        .unwrap();
    s.add(&stream, &["1", "2", "3"]).await;
    let taken = s.read("g", "dead", &stream, 10).await;
    let busy = s
        .broker
        .claim_idle(&stream, "g", "alive", Duration::from_secs(60), 10)
        .await
        .unwrap();
    assert!(busy.is_empty(), "recently delivered entries are not idle");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let claimed = s
        .broker
        .claim_idle(&stream, "g", "alive", Duration::from_millis(10), 2)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2, "up to count");
    assert!(claimed.iter().all(|d| d.deliveries == 2), "{claimed:?}");
    assert_eq!(claimed[0].entry.id, taken[0]);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let rest = s
        .broker
        .claim_idle(&stream, "g", "alive", Duration::from_millis(10), 10)
        .await
        .unwrap();
    let ids: Vec<&String> = rest.iter().map(|d| &d.entry.id).collect();
    assert!(
        ids.contains(&&taken[2]),
        "the cursor reaches the last one: {ids:?}"
    );
}

/// A consumer keeps its own in-flight entries from looking idle; touching an
/// entry another consumer holds neither refreshes nor takes it.
pub async fn touch_keeps_only_the_callers_entries(s: Subject) {
    let stream = s.name("touch");
    s.broker
        .create_group(&stream, "g", StartFrom::Beginning)
        .await
        .unwrap();
    s.add(&stream, &["mine", "theirs"]).await;
    let mine = s.read("g", "me", &stream, 1).await;
    let theirs = s.read("g", "other", &stream, 1).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let both = [mine[0].clone(), theirs[0].clone()];
    s.broker.touch(&stream, "g", "me", &both).await.unwrap();
    let claimed = s
        .broker
        .claim_idle(&stream, "g", "thief", Duration::from_millis(25), 10)
        .await
        .unwrap();
    let ids: Vec<&String> = claimed.iter().map(|d| &d.entry.id).collect();
    assert_eq!(ids, vec![&theirs[0]], "only the untouched one was idle");
}

/// A range reads entries by id, inclusive, outside any group.
pub async fn ranges_read_by_id(s: Subject) {
    let stream = s.name("range");
    let ids = s.add(&stream, &["1", "2", "3", "4"]).await;
    let mid = s
        .broker
        .range(&stream, Some(&ids[1]), Some(&ids[2]), 10)
        .await
        .unwrap();
    assert_eq!(
        mid.iter().map(|e| &e.id).collect::<Vec<_>>(),
        vec![&ids[1], &ids[2]]
    );
    assert_eq!(
        s.broker.range(&stream, None, None, 3).await.unwrap().len(),
        3
    );
    assert!(s
        .broker
        .range(&s.name("none"), None, None, 3)
        .await
        .unwrap()
        .is_empty());
}

/// Marks answer until their time to live has passed.
pub async fn marks_expire(s: Subject) {
    let key = s.name("mark");
    assert!(!s.broker.is_marked(&key).await.unwrap());
    s.broker
        .mark(&key, Duration::from_millis(50))
        .await
        .unwrap();
    assert!(s.broker.is_marked(&key).await.unwrap());
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert!(!s.broker.is_marked(&key).await.unwrap());
}

/// Deleted entries leave ranges, and a deleted pending entry is not handed
/// out again by a claim.
pub async fn deleted_entries_are_gone(s: Subject) {
    let stream = s.name("delete");
    s.broker
        .create_group(&stream, "g", StartFrom::Beginning)
        .await
        .unwrap();
    let ids = s.add(&stream, &["1", "2"]).await;
    s.read("g", "c", &stream, 10).await;
    s.broker.delete(&stream, &ids[..1]).await.unwrap();
    let left = s.broker.range(&stream, None, None, 10).await.unwrap();
    assert_eq!(
        left.iter().map(|e| &e.id).collect::<Vec<_>>(),
        vec![&ids[1]]
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    let claimed = s
        .broker
        .claim_idle(&stream, "g", "other", Duration::from_millis(10), 10)
        .await
        .unwrap();
    assert_eq!(
        claimed.iter().map(|d| &d.entry.id).collect::<Vec<_>>(),
        vec![&ids[1]]
    );
}

/// A missing stream or group is a [`MissingGroup`] error for reads,
/// backlogs, claims and touches alike (never a silent nothing, never a
/// backlog of 0); acking there is a no-op.
pub async fn a_missing_group_is_said_alike(s: Subject) {
    let stream = s.name("missing");
    let missing = |e: anyhow::Error| assert!(MissingGroup::in_error(&e), "{e:#}");
    for _ in 0..2 {
        missing(
            s.broker
                .read("g", "c", std::slice::from_ref(&stream), 1, NO_WAIT)
                .await
                .unwrap_err(),
        );
        missing(s.broker.backlog(&stream, "g").await.unwrap_err());
        missing(
            s.broker
                .claim_idle(&stream, "g", "c", Duration::ZERO, 1)
                .await
                .unwrap_err(),
        );
        missing(
            s.broker
                .touch(&stream, "g", "c", &["1-1".to_string()])
                .await
                .unwrap_err(),
        );
        s.broker
            .ack("g", &stream, &["1-1".to_string()])
            .await
            .unwrap();
        // Then the stream exists, but not the group.
        s.add(&stream, &["x"]).await;
    }
}

/// A commit applies a call's writes, appends and ack in one step, only
/// while its consumer holds the entry and what it read is unchanged; a
/// later commit sees an earlier one's writes.
pub async fn commits_are_all_or_nothing(s: Subject) {
    use runnel::kv::{Commit, KvEffects, KvRead, KvWrite, Outcome, Source};
    let (stream, out, bucket) = (
        s.tagged("kv-src"),
        s.tagged("kv-out"),
        s.tagged("kv-bucket"),
    );
    s.broker
        .create_group(&stream, "g", StartFrom::Beginning)
        .await
        .unwrap();
    let ids = s.add(&stream, &["a", "b"]).await;
    assert_eq!(s.read("g", "c1", &stream, 2).await, ids);
    let source = |id: &str, consumer: &str| Source {
        stream: stream.clone(),
        group: "g".into(),
        consumer: consumer.into(),
        id: id.into(),
    };
    let read = |value: Option<&str>| KvRead {
        bucket: bucket.clone(),
        key: "k".into(),
        value: value.map(|v| v.as_bytes().to_vec()),
    };
    let write = |value: &str| KvWrite {
        bucket: bucket.clone(),
        key: "k".into(),
        value: Some(value.as_bytes().to_vec()),
    };
    let commit = |id: &str, consumer: &str, seen: Option<&str>, new: &str| Commit {
        source: Some(source(id, consumer)),
        effects: KvEffects {
            reads: vec![read(seen)],
            writes: vec![write(new)],
            locks: Default::default(),
        },
        appends: vec![Append {
            stream: out.clone(),
            fields: vec![("event".into(), new.as_bytes().to_vec())],
        }],
        mark: None,
    };
    let value = || async { s.broker.kv_get(&bucket, &["k".to_string()]).await.unwrap()[0].clone() };
    // Another consumer does not hold the entry; a stale read conflicts.
    let outcomes = s
        .broker
        .commit(&[
            commit(&ids[0], "c2", None, "1"),
            commit(&ids[0], "c1", Some("9"), "1"),
        ])
        .await
        .unwrap();
    assert_eq!(outcomes[0], Outcome::NotHeld);
    assert!(
        matches!(&outcomes[1], Outcome::Conflict { key, .. } if key == "k"),
        "{outcomes:?}"
    );
    assert_eq!(value().await, None, "nothing applied");
    assert!(s
        .broker
        .range(&out, None, None, 10)
        .await
        .unwrap()
        .is_empty());
    // Two calls in one batch: the second read what the first wrote.
    let outcomes = s
        .broker
        .commit(&[
            commit(&ids[0], "c1", None, "1"),
            commit(&ids[1], "c1", Some("1"), "2"),
        ])
        .await
        .unwrap();
    assert_eq!(outcomes, vec![Outcome::Committed, Outcome::Committed]);
    assert_eq!(value().await, Some(b"2".to_vec()));
    let appended = s.broker.range(&out, None, None, 10).await.unwrap();
    assert_eq!(appended.len(), 2);
    assert_eq!(
        s.broker.backlog(&stream, "g").await.unwrap(),
        0,
        "both acked"
    );
    // Committing again (an answer that was lost) applies nothing.
    let again = s
        .broker
        .commit(&[commit(&ids[1], "c1", Some("2"), "3")])
        .await
        .unwrap();
    assert_eq!(again, vec![Outcome::NotHeld]);
    assert_eq!(value().await, Some(b"2".to_vec()));
    // A group that does not exist (or vanished: the subscriber creates it
    // again and the entry may come back) holds nothing: nothing applies.
    let mut orphan = commit(&ids[0], "c1", Some("2"), "9");
    if let Some(src) = &mut orphan.source {
        src.group = "no-such-group".into();
    }
    assert_eq!(
        s.broker.commit(&[orphan]).await.unwrap(),
        vec![Outcome::NotHeld]
    );
    assert_eq!(value().await, Some(b"2".to_vec()));
    // With an idempotency mark: the first entry of an event commits and
    // sets it; another entry of the same event is only acknowledged.
    let more = s.add(&stream, &["c", "d"]).await;
    assert_eq!(s.read("g", "c1", &stream, 2).await, more);
    let mark = runnel::kv::Mark {
        key: s.tagged("kv-mark"),
        ttl: Duration::from_secs(60),
    };
    let mut first = commit(&more[0], "c1", Some("2"), "3");
    first.mark = Some(mark.clone());
    let mut again = commit(&more[1], "c1", Some("3"), "4");
    again.mark = Some(mark.clone());
    let outcomes = s.broker.commit(&[first, again]).await.unwrap();
    assert_eq!(outcomes, vec![Outcome::Committed, Outcome::Duplicate]);
    assert_eq!(
        value().await,
        Some(b"3".to_vec()),
        "the duplicate wrote nothing"
    );
    assert!(s.broker.is_marked(&mark.key).await.unwrap());
    assert_eq!(
        s.broker.backlog(&stream, "g").await.unwrap(),
        0,
        "both acked"
    );
    // The key is listed.
    let (keys, _) = s.broker.kv_scan(&bucket, None, 100).await.unwrap();
    assert_eq!(keys, vec!["k".to_string()]);
}

/// A commit that acknowledges entry `id` of `stream` for `consumer` of
/// group `g`, having read `reads` and leaving `writes`, emitting nothing.
fn kv_commit(
    stream: &str,
    consumer: &str,
    id: &str,
    reads: Vec<runnel::kv::KvRead>,
    writes: Vec<runnel::kv::KvWrite>,
) -> runnel::kv::Commit {
    runnel::kv::Commit {
        source: Some(runnel::kv::Source {
            stream: stream.into(),
            group: "g".into(),
            consumer: consumer.into(),
            id: id.into(),
        }),
        effects: runnel::kv::KvEffects {
            reads,
            writes,
            locks: Default::default(),
        },
        appends: vec![],
        mark: None,
    }
}

/// A commit acknowledges only entries its consumer holds, however many
/// that consumer holds besides (Redis checks a whole batch's custody with
/// one ranged `XPENDING`, which may not list them all), and an entry
/// committed twice in one batch applies once.
pub async fn custody_holds_across_a_batch(s: Subject) {
    use runnel::kv::{KvWrite, Outcome};
    let (stream, bucket) = (s.tagged("kv-custody"), s.tagged("kv-custody-bucket"));
    s.broker
        .create_group(&stream, "g", StartFrom::Beginning)
        .await
        .unwrap();
    let values: Vec<String> = (0..60).map(|i| i.to_string()).collect();
    let values: Vec<&str> = values.iter().map(String::as_str).collect();
    let ids = s.add(&stream, &values).await;
    assert_eq!(s.read("g", "c1", &stream, 50).await, ids[..50]);
    assert_eq!(s.read("g", "c2", &stream, 10).await, ids[50..]);
    let commit = |id: &str, consumer: &str, key: &str| {
        let write = KvWrite {
            bucket: bucket.clone(),
            key: key.into(),
            value: Some(b"1".to_vec()),
        };
        kv_commit(&stream, consumer, id, vec![], vec![write])
    };
    // The first and last of c1's 50 (and 48 more held between them), one
    // of c2's, and c1's first again.
    let outcomes = s
        .broker
        .commit(&[
            commit(&ids[0], "c1", "first"),
            commit(&ids[49], "c1", "last"),
            commit(&ids[55], "c1", "not-c1s"),
            commit(&ids[0], "c1", "twice"),
            commit(&ids[55], "c2", "c2s"),
        ])
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        vec![
            Outcome::Committed,
            Outcome::Committed,
            Outcome::NotHeld,
            Outcome::NotHeld,
            Outcome::Committed,
        ]
    );
    let keys = ["first", "last", "not-c1s", "twice", "c2s"].map(String::from);
    let stored = s.broker.kv_get(&bucket, &keys).await.unwrap();
    let set: Vec<bool> = stored.iter().map(Option::is_some).collect();
    assert_eq!(set, vec![true, true, false, false, true]);
    assert_eq!(
        s.broker.backlog(&stream, "g").await.unwrap(),
        57,
        "three acked"
    );
}

/// A batch's writes land as the calls left them, in order: many keys from
/// one call (more than one Lua `unpack` takes, should a backend gather
/// them), a key set by one call and deleted by the next (which read it),
/// and a third call that read the deletion.
pub async fn a_batch_applies_many_writes_and_deletes_in_order(s: Subject) {
    use runnel::kv::{KvRead, KvWrite, Outcome};
    let (stream, bucket) = (s.tagged("kv-many"), s.tagged("kv-many-bucket"));
    s.broker
        .create_group(&stream, "g", StartFrom::Beginning)
        .await
        .unwrap();
    let ids = s.add(&stream, &["a", "b", "c"]).await;
    assert_eq!(s.read("g", "c1", &stream, 3).await, ids);
    let write = |key: &str, value: Option<&str>| KvWrite {
        bucket: bucket.clone(),
        key: key.into(),
        value: value.map(|v| v.as_bytes().to_vec()),
    };
    let read = |key: &str, value: Option<&str>| KvRead {
        bucket: bucket.clone(),
        key: key.into(),
        value: value.map(|v| v.as_bytes().to_vec()),
    };
    let commit = |id: &str, reads: Vec<KvRead>, writes: Vec<KvWrite>| {
        kv_commit(&stream, "c1", id, reads, writes)
    };
    let many: Vec<KvWrite> = (0..5000)
        .map(|i| write(&format!("k{i}"), Some(&i.to_string())))
        .chain([write("gone", Some("soon")), write("empty", Some(""))])
        .collect();
    let outcomes = s
        .broker
        .commit(&[
            commit(&ids[0], vec![], many),
            commit(
                &ids[1],
                vec![read("gone", Some("soon"))],
                vec![write("gone", None)],
            ),
            commit(
                &ids[2],
                vec![read("gone", None)],
                vec![write("after", Some("x"))],
            ),
        ])
        .await
        .unwrap();
    assert_eq!(outcomes, vec![Outcome::Committed; 3]);
    let keys: Vec<String> = ["k0", "k777", "k4999", "gone", "empty", "after"]
        .map(String::from)
        .to_vec();
    let values = s.broker.kv_get(&bucket, &keys).await.unwrap();
    let values: Vec<Option<String>> = values
        .into_iter()
        .map(|v| v.map(|v| String::from_utf8(v).unwrap()))
        .collect();
    assert_eq!(
        values,
        [
            Some("0"),
            Some("777"),
            Some("4999"),
            None,
            Some(""),
            Some("x")
        ]
        .map(|v| v.map(String::from))
        .to_vec()
    );
}

/// Instantiates every contract check for one backend: `broker_contract!(mod_name, async
/// fn() -> Arc<dyn Broker>)`.
#[macro_export]
macro_rules! broker_contract {
    ($backend:ident, $make:expr) => {
        mod $backend {
            // The caller's imports, for `$make`.
            #[allow(unused_imports)]
            use super::*;
            use $crate::contract::*;

            async fn subject() -> Subject {
                Subject {
                    broker: ($make)().await,
                    prefix: $crate::unique(stringify!($backend)),
                }
            }

            $crate::broker_contract!(@checks
                appends_keep_their_order,
                groups_start_where_asked,
                a_group_can_start_after_an_entry,
                reads_make_entries_pending_until_acked,
                idle_entries_are_reclaimed_with_their_deliveries_counted,
                touch_keeps_only_the_callers_entries,
                ranges_read_by_id,
                marks_expire,
                deleted_entries_are_gone,
                a_missing_group_is_said_alike,
                commits_are_all_or_nothing,
                custody_holds_across_a_batch,
                a_batch_applies_many_writes_and_deletes_in_order,
            );
        }
    };
    (@checks $($check:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $check() {
                $crate::contract::$check(subject().await).await;
            }
        )*
    };
}
