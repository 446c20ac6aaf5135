//! The items' job graphs, as the runner's bookkeeping: every node's record (an item's first
//! request, or a step sent on its own once the node above it ended), what each waits for, and
//! the actions the current states call for — sends, lookups — collected for the runner to
//! perform. No I/O and no clock of its own: events arrive with their time (`apply`,
//! `take`), due nodes are asked for (`due`), and what changed is committed by the caller
//! before any action is performed. Here live branch choice (`follow`), result filling
//! (`step_payload`), the results kept (`keep_result`), notification vetting (`vet`), the
//! settlement rule of each node (`settle_of`) and the routing of each lookup by it (`route`:
//! with its group, by key, sent again under the same key, or to a person).

use super::machine::{self, Effect, Event, Millis, State, Timings, Verdict};
use super::status::Tally;
use super::store::{Record, Store, StoreError};
use crate::compile::Flow;
use crate::providers::{Adapter, Notice, Rendered, contradiction};
use crate::schema::Settle;
use serde_json::Value;
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use super::runner::{NoticeCounts, PlannedItem};

/// An item's requests as planned: its first request (a Paysend tree, or one node) and what
/// each of its steps sends (`Flow::steps` order), before the results they read are filled in.
#[derive(Default)]
pub struct Planned {
    pub payload: Vec<Rendered>,
    pub steps: Vec<Rendered>,
}

/// Renders an item's requests when they are needed (a run keeps none in memory: see
/// `execute::rows`, which reads the item's row again and checks its digest). Err: the item
/// source no longer holds the item as it was validated, in words.
pub trait Render: Sync {
    fn planned(&self, item: &PlannedItem) -> Result<Planned, String>;
}

/// Why a unit's request cannot be made now.
#[derive(Debug)]
pub(super) enum Unmade {
    /// A result it reads is missing: the node cannot be sent, ever.
    Missing(String),
    /// Its row could not be read again as validated: the run stops, nothing of it is sent.
    Source(String),
}

/// Where the records a run let go are read back from: the store (`store::Reader`), or a test's
/// map of what was committed.
pub trait Pager: Sync {
    /// The record committed at `index`, if any.
    fn record(&self, index: u64) -> Result<Option<Record>, StoreError>;
    /// Every committed record, in index order.
    fn each(&self, f: &mut dyn FnMut(u64, Record)) -> Result<(), StoreError>;
}

impl Pager for super::store::Reader {
    fn record(&self, index: u64) -> Result<Option<Record>, StoreError> {
        super::store::Reader::record(self, index)
    }
    fn each(&self, f: &mut dyn FnMut(u64, Record)) -> Result<(), StoreError> {
        super::store::Reader::each(self, f)
    }
}

/// Where a unit's record is. A run holds the records of the nodes not ended; an ended node's
/// record is let go once its end is committed and read back from the store when something
/// asks about it again (a late notification, a step reading its result).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Place {
    /// An item never stored: planned, its record made from its `PlannedItem` when needed.
    Untouched,
    /// In `Book::live`.
    Live,
    /// Ended and committed: in the store only.
    Out,
}

/// How many items' rendered requests are kept between the rounds that need them.
const PLANNED_KEPT: usize = 4096;

/// A step — a node of the item's graph sent as a request of its own — as the runner needs it
/// (see `Flow::steps`).
pub(super) struct StepInfo {
    pub(super) path: String,
    /// The step it follows (0: the item's first request).
    pub(super) after: usize,
    /// The id of the task it follows.
    pub(super) after_id: String,
    pub(super) link: crate::manifest::Link,
    pub(super) delay: Duration,
    /// How a request of it whose answer was lost is settled.
    pub(super) settle: Settle,
    /// Its operation.
    pub(super) op: String,
    /// The tasks whose results it may read (`${result.<id>.<path>}`), by id, with the step each
    /// one's result is kept in. For a tree the provider runs, only the payout it follows.
    pub(super) reads: Vec<(String, usize)>,
    /// Payload paths filled from results, and the type each goes on the wire as.
    pub(super) typed: Vec<(String, crate::schema::Wire)>,
}

/// The loop's bookkeeping around the records: which items wait for what. A record is a *unit*:
/// an item's first request (units `0..items`, in batch order) or one of its delayed steps
/// (appended as they come due).
pub(super) struct Book<'a> {
    pub(super) flow: &'a Flow,
    pub(super) items: &'a [PlannedItem],
    /// Renders an item's requests from its row when they are needed.
    pub(super) render: &'a dyn Render,
    /// Items' requests rendered lately (at most `PLANNED_KEPT`).
    pub(super) planned: std::sync::Mutex<HashMap<usize, std::sync::Arc<Planned>>>,
    /// Every node is a request of its own, under its own key (the provider runs nothing itself).
    pub(super) client_run: bool,
    /// The first request's operation, and how it settles.
    pub(super) root_op: String,
    pub(super) root_settle: Settle,
    /// Steps (0: the item's first request) whose results later steps read: kept in the record.
    pub(super) read: Vec<bool>,
    pub(super) adapter: &'a dyn Adapter,
    /// Notifications name nodes by key (`by_key` is kept up to date as steps are created).
    pub(super) keyed_notices: bool,
    /// The batch's preflight, which every item graph depends on.
    pub(super) gate: Gate,
    /// What the preflight answered, by task id (`${result.<preflight id>.<path>}`).
    pub(super) preflight: BTreeMap<String, Value>,
    /// What this run still has to pay, per currency (items not started): a balance the
    /// preflight reports must cover it.
    pub(super) owed: BTreeMap<String, rust_decimal::Decimal>,
    /// The records of units not ended, and of units changed since the last commit.
    pub(super) live: HashMap<usize, Record>,
    /// Where each unit's record is.
    pub(super) place: Vec<Place>,
    /// Reads back the records let go.
    pub(super) pager: &'a dyn Pager,
    /// A record that could not be read back: the next commit fails with it (nothing decided
    /// on a record that was not there is ever committed or acted on).
    pub(super) fault: std::sync::Mutex<Option<StoreError>>,
    /// The batch's counts and amounts by state, kept as states change.
    pub(super) tally: Tally,
    /// Units that took a final or review state (a new one) since the display last looked, and
    /// whether they were final before.
    pub(super) ended: Vec<(usize, bool)>,
    /// (item, step) of each unit past the items (a unit below `items.len()` is `(u, 0)`).
    pub(super) step_units: Vec<(usize, usize)>,
    /// Delayed steps' units by (item, step); an item's first request is unit `item`.
    pub(super) unit_at: HashMap<(usize, usize), usize>,
    /// Steps 1.. (index k - 1), and the steps that follow each step (index k).
    pub(super) steps: Vec<StepInfo>,
    pub(super) followers: Vec<Vec<usize>>,
    /// Items before this one were started (file order): the next one not started is at or
    /// after it.
    pub(super) ready_from: usize,
    /// (due time, item); stale entries are skipped when popped.
    pub(super) timers: BTreeSet<(Millis, usize)>,
    /// Items with a request out (their answers are awaited).
    pub(super) in_flight: HashSet<usize>,
    /// Items neither final nor under review.
    pub(super) open: usize,
    /// Submitted items by the group their reference belongs to.
    pub(super) groups: HashMap<String, Vec<usize>>,
    pub(super) changed: Vec<usize>,
    pub(super) sends: Vec<usize>,
    pub(super) lookups: Vec<usize>,
    /// Items by key, as notifications name them (built when notifications can arrive).
    pub(super) by_key: KeyIndex,
    /// Lookups whose answer comes as a `Notice::Subject` and has not come yet: the units that
    /// asked and when, by the lookup's reference.
    pub(super) asked: HashMap<String, (Vec<usize>, Millis)>,
    /// Lookups whose answer came: a later answer under the same reference (a copy, or the
    /// genuine one after a forgery) is still taken, so a contradiction is seen.
    pub(super) answered: HashSet<String>,
    /// The last journaled notice acted on since the last commit (committed with the states).
    pub(super) applied: Option<u64>,
    /// Notifications that came before the answer they follow (`Rejection::NotYet`): the notice,
    /// its digest, and when it came. Memory only: a provider that hears 202 may send it again.
    pub(super) held: Vec<(Notice, [u8; 32], Millis)>,
    pub(super) notices: NoticeCounts,
}

/// A lookup to make, as a node's state and its operation's settlement rule route it.
pub(super) enum Ask {
    /// Accepted under a reference: its group is asked about once for all its `members` (unit,
    /// position in the group); `seq` numbers the question.
    Group {
        group: String,
        seq: u32,
        members: Vec<(usize, usize)>,
    },
    /// Sent again under the same key: the provider deduplicates it, or it only reads.
    Resend { unit: usize, payload: Vec<Rendered> },
    /// Looked up by `key` (a tree the provider ran: the item's, with what it sent).
    Key {
        unit: usize,
        key: String,
        payload: Vec<Rendered>,
    },
}

/// Nodes by the key notifications name them by: 16 bytes a node (a hash of the key and the
/// node, sorted), not the key's text — a match is confirmed against the node's record (`Book::unit_by_key`).
#[derive(Default)]
pub(super) struct KeyIndex {
    /// (hash, unit), sorted: every node when notifications could first arrive.
    sorted: Vec<(u64, u32)>,
    /// Nodes created since (steps), by hash.
    later: HashMap<u64, Vec<usize>>,
}

impl KeyIndex {
    fn hash(key: &str) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        h.finish()
    }

    /// Indexes nodes by their keys, given as (key, node), all at once.
    pub(super) fn build(units: impl Iterator<Item = (String, usize)>) -> KeyIndex {
        let mut sorted: Vec<(u64, u32)> =
            units.map(|(k, u)| (KeyIndex::hash(&k), u as u32)).collect();
        sorted.sort_unstable();
        sorted.shrink_to_fit();
        KeyIndex {
            sorted,
            later: HashMap::new(),
        }
    }

    pub(super) fn insert(&mut self, key: &str, unit: usize) {
        self.later
            .entry(KeyIndex::hash(key))
            .or_default()
            .push(unit);
    }

    /// The nodes whose key may be `key` (its hash matches).
    fn candidates(&self, key: &str) -> impl Iterator<Item = usize> + '_ {
        let h = KeyIndex::hash(key);
        let from = self.sorted.partition_point(|&(x, _)| x < h);
        self.sorted[from..]
            .iter()
            .take_while(move |&&(x, _)| x == h)
            .map(|&(_, u)| u as usize)
            .chain(self.later.get(&h).into_iter().flatten().copied())
    }
}

/// Why a notification is not taken.
pub(super) enum Rejection {
    /// It contradicts what an item sent, or names nothing of this batch.
    Never(String),
    /// It names a request or lookup whose answer has not come back yet: a notification can
    /// overtake the answer it follows. Held a while, looked at again each round, then rejected.
    NotYet(String),
}

impl Rejection {
    pub(super) fn why(&self) -> &str {
        match self {
            Rejection::Never(w) | Rejection::NotYet(w) => w,
        }
    }
}

/// The batch's preflight (Paysend getBalance, Payonic health): the node of the batch's own
/// graph every item graph depends on — no item is sent before it passed. Kept in memory only:
/// each run asks again (a balance is as good as the moment it was read).
pub(super) enum Gate {
    /// No preflight, or it passed: items may start.
    Open,
    /// Its request (the `attempt`-th; `polls` follow-ups of an unfinished one so far) is due
    /// at `at`; `next`: the follow-up the provider named, else the adapter's first request.
    Due {
        attempt: u32,
        polls: u32,
        at: Millis,
        next: Option<crate::providers::Request>,
    },
    /// Its request is out.
    Asking { attempt: u32, polls: u32 },
    /// It failed: nothing is sent. `unreachable`: the provider never answered.
    Closed { why: String, unreachable: bool },
}

/// How long an unfinished preflight waits before it is asked again, and how often.
const PREFLIGHT_POLL: Duration = Duration::from_millis(500);
const PREFLIGHT_POLLS: u32 = 60;

/// How long a notification that overtook its request's answer is held.
pub(super) const HOLD: Duration = Duration::from_secs(10);

pub(super) fn is_open(s: &State) -> bool {
    !(s.is_final() || matches!(s, State::NeedsReview { .. }))
}

impl Book<'_> {
    /// Steps item `i` with `event`: records a changed state, schedules its next due time and
    /// routes the effects.
    pub(super) fn apply(
        &mut self,
        i: usize,
        event: Event,
        policy: &crate::manifest::RetryPolicy,
        timings: &Timings,
        adapter: &dyn Adapter,
    ) {
        let now = match &event {
            Event::Tick { now }
            | Event::Sent { now, .. }
            | Event::Observed { now, .. }
            | Event::Resume { now } => *now,
        };
        let answer = match &event {
            Event::Sent {
                verdict: Verdict::Succeeded { result, .. },
                ..
            }
            | Event::Observed {
                verdict: Verdict::Succeeded { result, .. },
                ..
            } => result.clone(),
            _ => None,
        };
        // What the change means, read off the state it leaves (not copied: this is per answer).
        let before = &self.rec_mut(i).state;
        let (s, fx) = machine::step(before, event, policy, timings);
        let changes = s != *before;
        let was_final = before.is_final();
        let was_open = is_open(before);
        let was_succeeded = matches!(before, State::Succeeded { .. });
        let was_named = super::status::state_name(before);
        let ends = s.is_final() && !was_final;
        // What a later node reads of this one: kept with the record, committed with its end.
        if matches!(s, State::Succeeded { .. }) && !was_succeeded && self.read[self.unit(i).1] {
            let kept = self.keep_result(i, answer.as_ref());
            self.rec_mut(i).result = Some(kept);
        }
        if changes {
            if let State::Submitted { reference, .. } = &s {
                let (group, _) = adapter.reference_group(reference);
                self.groups.entry(group).or_default().push(i);
            }
            match (was_open, is_open(&s)) {
                (true, false) => self.open -= 1,
                (false, true) => self.open += 1,
                _ => {}
            }
            if (s.is_final() || matches!(s, State::NeedsReview { .. }))
                && super::status::state_name(&s) != was_named
            {
                self.ended.push((i, was_final));
            }
            let index = self.store_index(i);
            let r = self.live.get_mut(&i).expect("paged in above");
            self.tally.remove(index, r);
            if matches!(s, State::Sending { .. }) && r.first_sent.is_none() {
                r.first_sent = Some(now);
            }
            r.updated = now;
            r.state = s;
            self.tally.add(index, r);
            self.changed.push(i);
        }
        self.schedule(i);
        if ends {
            self.follow(i, now);
        }
        for e in fx {
            match e {
                Effect::Send { .. } => self.sends.push(i),
                Effect::Lookup => self.lookups.push(i),
                Effect::WakeAt(_) => {}
            }
        }
    }

    /// Creates the delayed steps that follow unit `u`, which just ended: scheduled after their
    /// delay when the branch they hang on was taken, skipped otherwise. Committed with `u`'s
    /// final state, so a crash cannot lose them.
    pub(super) fn follow(&mut self, u: usize, now: Millis) {
        use crate::manifest::Link;
        let (item, step) = self.unit(u);
        for k in self.followers[step].clone() {
            if self.unit_at.contains_key(&(item, k)) {
                continue;
            }
            let s = &self.steps[k - 1];
            let outcome = match &self.rec(u).state {
                State::Succeeded { .. } => Some(Link::Success),
                State::Failed { .. } => Some(Link::Fail),
                _ => None,
            };
            let state = match outcome {
                Some(o) if s.link == Link::Always || s.link == o => State::Scheduled {
                    at: now.saturating_add(s.delay.as_millis() as u64),
                },
                Some(o) => State::Skipped {
                    reason: format!("`{}` ended in {}", s.after_id, o.as_str()),
                    at: now,
                },
                None => State::Skipped {
                    reason: format!("`{}` did not run", s.after_id),
                    at: now,
                },
            };
            let base = self.rec(item);
            let mut r = Record::planned(
                &base.id,
                &crate::keys::task_key(&base.key, &format!("step/{}", s.path)),
                &base.digest,
                base.line,
                Default::default(),
            );
            r.step = Some(s.path.clone());
            r.updated = now;
            drop(base);
            let skipped = state.is_final();
            r.state = state;
            let v = self.units();
            if self.client_run && self.keyed_notices {
                self.by_key.insert(&self.adapter.wire_key(&r.key), v);
            }
            self.step_units.push((item, k));
            self.place.push(Place::Live);
            self.tally.add(self.store_index(v), &r);
            if skipped {
                self.ended.push((v, false));
            }
            self.live.insert(v, r);
            self.unit_at.insert((item, k), v);
            if !skipped {
                self.open += 1;
            }
            self.changed.push(v);
            self.schedule(v);
            if skipped {
                self.follow(v, now);
            }
        }
    }

    /// The request of step unit `u`, with the results of the nodes above it it reads: a full
    /// path into a node's kept result (`${result.auth.paymentid}`,
    /// `${result.account.result.accountToken}`); for a failed node its `code` and
    /// `description`; for a tree the provider ran, the ids its verdict reported.
    pub(super) fn step_payload(&self, u: usize) -> Result<Rendered, Unmade> {
        let (item, step) = self.unit(u);
        let rendered = self.planned(item)?;
        let Some(planned) = rendered.steps.get(step - 1) else {
            return Err(Unmade::Source(format!(
                "item {} renders no request for `{}`",
                self.items[item].id,
                self.steps[step - 1].path
            )));
        };
        let s = &self.steps[step - 1];
        let lookup = |id: &str, path: &str| -> Option<Value> {
            if self.preflight.contains_key(id) {
                return self.preflight_value(id, path);
            }
            let &(_, at) = s.reads.iter().find(|(n, _)| n == id)?;
            let unit = match at {
                0 => item,
                _ => *self.unit_at.get(&(item, at))?,
            };
            let rec = self.rec(unit);
            let name = path.rsplit('.').next().unwrap_or(path);
            match &rec.state {
                State::Succeeded { ids, .. } => rec
                    .result
                    .as_ref()
                    .and_then(|r| crate::providers::json_path(r, path))
                    .cloned()
                    .or_else(|| {
                        ids.get(path)
                            .or_else(|| ids.get(name))
                            .map(|v| Value::String(v.to_string()))
                    }),
                State::Failed {
                    code, description, ..
                } => match name {
                    "code" => Some(code.clone()),
                    "description" | "comment" => Some(description.clone()),
                    _ => None,
                }
                .map(Value::String),
                _ => None,
            }
        };
        let mut missing = Vec::new();
        let v = crate::providers::fill_rendered(planned, &lookup, &mut missing);
        if !missing.is_empty() {
            return Err(Unmade::Missing(format!(
                "`{}` needs {} of the task{} above it, which did not report it",
                s.path,
                missing.join(", "),
                if s.reads.len() == 1 { "" } else { "s" }
            )));
        }
        if s.typed.is_empty() || !planned.get().contains("${result.") {
            return Ok(v);
        }
        // A value read from a result goes on the wire as the field's type (an amount the
        // provider listed as "1095" is the number 1095 in a minor-units field).
        let mut tree: Value = serde_json::from_str(v.get()).expect("kept JSON parses");
        for (path, wire) in &s.typed {
            if let Some(x) = crate::providers::json_path_mut(&mut tree, path) {
                crate::providers::retype(x, *wire).map_err(|why| {
                    Unmade::Missing(format!("`{}`: `{path}` read from a result {why}", s.path))
                })?;
            }
        }
        Ok(crate::providers::keep(&tree))
    }

    /// The result kept for unit `u`, which just succeeded: for a node payrun sent on its own,
    /// what its request sent (keys as they went on the wire) overlaid with the provider's
    /// `answer`; then every field its operation marks sensitive, and any value shaped like a
    /// card number, removed — nothing of the kind is ever at rest.
    pub(super) fn keep_result(&self, u: usize, answer: Option<&Value>) -> Value {
        let op = self.flow.op(self.op_of(u));
        let mut out = serde_json::Map::new();
        if self.client_run
            && let Some(Value::Object(sent)) = self
                .sent(u)
                .first()
                .and_then(|r| serde_json::from_str::<Value>(r.get()).ok())
        {
            out = sent;
            let key = self.adapter.wire_key(&self.rec(u).key);
            for v in out.values_mut() {
                if v.as_str() == Some(crate::keys::KEYED) {
                    *v = Value::String(key.clone());
                }
            }
        }
        if let Some(Value::Object(a)) = answer {
            out.extend(a.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let mut v = Value::Object(out);
        crate::providers::scrub(&mut v, op);
        v
    }

    /// Where unit `u` is stored.
    pub(super) fn store_index(&self, u: usize) -> u64 {
        match self.unit(u) {
            (item, 0) => item as u64,
            (item, step) => super::store::step_index(step, item),
        }
    }

    pub(super) fn schedule(&mut self, i: usize) {
        if let Some(d) = self.rec(i).state.due() {
            self.timers.insert((d, i));
        }
    }

    /// Items whose due time has come, each once.
    pub(super) fn due(&mut self, now: Millis) -> Vec<usize> {
        let mut out = Vec::new();
        while let Some(&(t, i)) = self.timers.first() {
            if t > now {
                break;
            }
            self.timers.pop_first();
            // A unit let go has ended: it is due no more.
            if self.place[i] == Place::Live
                && self.live[&i].state.due() == Some(t)
                && !self.in_flight.contains(&i)
            {
                out.push(i);
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Makes what changed durable, then lets go of the records of the units that ended.
    pub(super) fn commit(&mut self, store: &mut Store) -> Result<(), StoreError> {
        self.check_fault()?;
        self.changed.sort_unstable();
        self.changed.dedup();
        let rows: Vec<(u64, &Record)> = self
            .changed
            .iter()
            .map(|&i| (self.store_index(i), &self.live[&i]))
            .collect();
        store.commit_with(&rows, self.applied)?;
        self.committed();
        Ok(())
    }

    /// What changed was committed: the records of the units that ended are let go.
    pub(super) fn committed(&mut self) {
        for &i in &self.changed {
            if self.live.get(&i).is_some_and(|r| r.state.is_final()) {
                self.live.remove(&i);
                self.place[i] = Place::Out;
            }
        }
        self.changed.clear();
        self.applied = None;
    }

    /// A record that could not be read back since the last commit, as the error to stop on.
    pub(super) fn check_fault(&self) -> Result<(), StoreError> {
        match self.fault.lock().unwrap_or_else(|e| e.into_inner()).take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// (item, step) of unit `u`; step 0 is the item's first request.
    pub(super) fn unit(&self, u: usize) -> (usize, usize) {
        match u.checked_sub(self.items.len()) {
            None => (u, 0),
            Some(k) => self.step_units[k],
        }
    }

    /// How many units there are (items, then the steps created so far).
    pub(super) fn units(&self) -> usize {
        self.items.len() + self.step_units.len()
    }

    /// Unit `u`'s record: held, made from its planned item, or read back from the store.
    pub(super) fn rec(&self, u: usize) -> Cow<'_, Record> {
        match self.place[u] {
            Place::Live => Cow::Borrowed(&self.live[&u]),
            Place::Untouched => Cow::Owned(self.untouched(u)),
            Place::Out => Cow::Owned(self.read_back(u)),
        }
    }

    /// Unit `u`'s record, held from now until its end is committed.
    pub(super) fn rec_mut(&mut self, u: usize) -> &mut Record {
        if self.place[u] != Place::Live {
            let r = self.rec(u).into_owned();
            self.live.insert(u, r);
            self.place[u] = Place::Live;
        }
        self.live.get_mut(&u).expect("held")
    }

    fn untouched(&self, item: usize) -> Record {
        self.items[item].record()
    }

    /// The record of unit `u`, let go when it ended, read back. One that cannot be read makes
    /// the next commit fail (see `fault`); meanwhile a planned record stands in for it.
    fn read_back(&self, u: usize) -> Record {
        let index = self.store_index(u);
        let why = match self.pager.record(index) {
            Ok(Some(r)) => return r,
            Ok(None) => StoreError::other(format!(
                "the record of item {} (store index {index}) is missing from the store, which \
                 this run committed it to",
                self.items[self.unit(u).0].id
            )),
            Err(e) => e,
        };
        tracing::error!("{why}");
        self.fault
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(why);
        self.untouched(self.unit(u).0)
    }

    /// Routes the lookups of `units` (each not final and not in flight): a node accepted under a
    /// reference is asked about with its group; else its operation's rule (`settle:`) says —
    /// sent again under the same key, looked up by key, or, where nothing is safe, handed to a
    /// person here (`NeedsReview`, never sent again). A node whose lookup needs a result it
    /// cannot have fails here. Every node routed to a request is in flight from now. Err: an
    /// item's row could not be read again (the run stops, nothing more is sent).
    pub(super) fn route(
        &mut self,
        units: &[usize],
        now: Millis,
        policy: &crate::manifest::RetryPolicy,
        timings: &Timings,
        adapter: &dyn Adapter,
    ) -> Result<Vec<Ask>, String> {
        let mut groups: BTreeMap<String, Vec<(usize, usize)>> = BTreeMap::new();
        let mut asks = Vec::new();
        let mut settled: Vec<(usize, Verdict)> = Vec::new();
        for &i in units {
            self.in_flight.insert(i);
            self.rec_mut(i).requests += 1;
            if let State::Submitted { reference, .. } = &self.live[&i].state {
                let (group, pos) = adapter.reference_group(reference);
                groups.entry(group).or_default().push((i, pos));
                continue;
            }
            let payload = match (self.settle_of(i), self.client_run, self.unit(i)) {
                (Settle::Review, ..) => {
                    self.in_flight.remove(&i);
                    self.rec_mut(i).requests -= 1;
                    settled.push((
                        i,
                        Verdict::NeedsReview {
                            code: "in-doubt".into(),
                            description: format!(
                                "its answer was lost and {} offers no way to find out whether \
                                 `{}` was done: it is not sent again",
                                self.flow.provider.title,
                                self.op_of(i)
                            ),
                        },
                    ));
                    continue;
                }
                // A tree the provider ran is looked up by the item's key and request.
                (Settle::Lookup, false, (item, _)) => {
                    let p = self.planned(item).map_err(|e| match e {
                        Unmade::Source(why) | Unmade::Missing(why) => why,
                    })?;
                    asks.push(Ask::Key {
                        unit: i,
                        key: self.rec(item).key.clone(),
                        payload: p.payload.clone(),
                    });
                    continue;
                }
                _ => self.payload_of(i),
            };
            match payload {
                Ok(payload) if self.settle_of(i) == Settle::Resend => {
                    asks.push(Ask::Resend { unit: i, payload })
                }
                Ok(payload) => asks.push(Ask::Key {
                    unit: i,
                    key: self.live[&i].key.clone(),
                    payload,
                }),
                Err(Unmade::Source(why)) => return Err(why),
                Err(Unmade::Missing(why)) => {
                    self.in_flight.remove(&i);
                    settled.push((
                        i,
                        Verdict::Failed {
                            code: "unresolved-result".into(),
                            description: why,
                        },
                    ));
                }
            }
        }
        for (group, members) in groups {
            let seq = members
                .iter()
                .map(|&(i, _)| self.rec(i).requests)
                .max()
                .unwrap_or(0);
            asks.push(Ask::Group {
                group,
                seq,
                members,
            });
        }
        for (u, verdict) in settled {
            self.apply(
                u,
                Event::Observed { verdict, now },
                policy,
                timings,
                adapter,
            );
        }
        Ok(asks)
    }

    /// The node a notification names by `key` (dashes or none), if it is one of this batch's.
    pub(super) fn unit_by_key(&self, key: &str) -> Option<usize> {
        let key = key.replace('-', "");
        self.by_key
            .candidates(&key)
            .find(|&u| self.adapter.wire_key(&self.rec(u).key) == key)
    }

    /// The next item not started yet (file order), taken off the ready list.
    pub(super) fn pop_ready(&mut self) -> Option<usize> {
        let i = self.peek_ready()?;
        self.ready_from = i + 1;
        Some(i)
    }

    /// Whether an item is still to be started.
    pub(super) fn any_ready(&mut self) -> bool {
        self.peek_ready().is_some()
    }

    fn peek_ready(&mut self) -> Option<usize> {
        while self.ready_from < self.items.len() {
            let i = self.ready_from;
            let planned = match self.place[i] {
                Place::Untouched => true,
                Place::Live => matches!(self.live[&i].state, State::Planned),
                Place::Out => false,
            };
            if planned {
                return Some(i);
            }
            self.ready_from += 1;
        }
        None
    }

    /// The batch's status as this run holds it (`running`: who runs it).
    pub(super) fn status(
        &mut self,
        batch: &str,
        running: Option<super::status::Holder>,
    ) -> super::status::StatusView {
        let mut tally = std::mem::take(&mut self.tally);
        let mut open: Vec<(u64, &Record)> = self
            .live
            .iter()
            .map(|(&u, r)| (self.store_index(u), r))
            .collect();
        open.sort_unstable_by_key(|(i, _)| *i);
        tally.relist(open.into_iter());
        self.tally = tally;
        self.tally.view(batch, running)
    }

    /// Item `item`'s requests as planned, rendered from its row (kept a while: the rounds
    /// around a send ask for them more than once).
    pub(super) fn planned(&self, item: usize) -> Result<std::sync::Arc<Planned>, Unmade> {
        let mut kept = self.planned.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = kept.get(&item) {
            return Ok(p.clone());
        }
        let p = std::sync::Arc::new(
            self.render
                .planned(&self.items[item])
                .map_err(Unmade::Source)?,
        );
        if kept.len() >= PLANNED_KEPT {
            kept.clear();
        }
        kept.insert(item, p.clone());
        Ok(p)
    }

    /// What unit `u` sends (`payload_of`), or as planned when a result it reads is missing;
    /// nothing when its row cannot be read again (the runner stops on that when it sends).
    pub(super) fn sent(&self, u: usize) -> Vec<Rendered> {
        match self.payload_of(u) {
            Ok(p) => p,
            Err(Unmade::Source(_)) => Vec::new(),
            Err(Unmade::Missing(_)) => {
                let Ok(planned) = self.planned(self.unit(u).0) else {
                    return Vec::new();
                };
                match self.unit(u).1 {
                    0 => planned.payload.clone(),
                    s => planned.steps.get(s - 1).cloned().into_iter().collect(),
                }
            }
        }
    }

    /// How unit `u`'s lost answer is settled.
    pub(super) fn settle_of(&self, u: usize) -> Settle {
        match self.unit(u).1 {
            0 => self.root_settle,
            k => self.steps[k - 1].settle,
        }
    }

    /// What unit `u` sends, with the results it reads; Err: a result it needs is missing, or
    /// its row cannot be read again.
    pub(super) fn payload_of(&self, u: usize) -> Result<Vec<Rendered>, Unmade> {
        match self.unit(u) {
            (item, 0) => self
                .with_preflight(&self.planned(item)?.payload)
                .map_err(Unmade::Missing),
            _ => self.step_payload(u).map(|v| vec![v]),
        }
    }

    /// `payload` with the preflight's results filled in (as it is when it reads none).
    fn with_preflight(&self, payload: &[Rendered]) -> Result<Vec<Rendered>, String> {
        if self.preflight.is_empty() || !payload.iter().any(|r| r.get().contains("${result.")) {
            return Ok(payload.to_vec());
        }
        let mut missing = Vec::new();
        let filled = payload
            .iter()
            .map(|r| {
                crate::providers::fill_rendered(
                    r,
                    &|id, path| {
                        self.preflight_value(id, path)
                            .or_else(|| Some(Value::String(format!("${{result.{id}.{path}}}"))))
                    },
                    &mut missing,
                )
            })
            .collect();
        match missing.first() {
            None => Ok(filled),
            Some(m) => Err(format!("the preflight answer has no `{m}`")),
        }
    }

    /// `${result.<id>.<path>}` of a preflight task.
    fn preflight_value(&self, id: &str, path: &str) -> Option<Value> {
        crate::providers::json_path(self.preflight.get(id)?, path).cloned()
    }

    /// Whether items may start: the preflight passed (or there is none).
    pub(super) fn gate_open(&self) -> bool {
        matches!(self.gate, Gate::Open)
    }

    /// The preflight's request is due at `now`: Some((attempt's follow-up request, if the
    /// provider named one)); the gate then waits for its answer.
    pub(super) fn preflight_due(
        &mut self,
        now: Millis,
    ) -> Option<Option<crate::providers::Request>> {
        match &mut self.gate {
            Gate::Due { at, .. } if *at > now => None,
            Gate::Due {
                attempt,
                polls,
                next,
                ..
            } => {
                let request = next.take();
                self.gate = Gate::Asking {
                    attempt: *attempt,
                    polls: *polls,
                };
                Some(request)
            }
            _ => None,
        }
    }

    /// When the preflight is next due, if it waits for a time.
    pub(super) fn preflight_at(&self) -> Option<Millis> {
        match self.gate {
            Gate::Due { at, .. } => Some(at),
            _ => None,
        }
    }

    /// What the preflight's answer means for the batch (`unreachable`: it is no answer of the
    /// provider's). Passed: its results are kept, every item's requests are checked for the
    /// results they read, and a balance it reports must cover what this run still has to pay;
    /// then items may start. Not finished: asked again (its poll) after a short wait; not taken:
    /// again after the retry policy's delay, until it runs out. Failed: nothing is sent.
    pub(super) fn preflight_answer(
        &mut self,
        answer: crate::providers::Preflight,
        unreachable: bool,
        now: Millis,
        policy: &crate::manifest::Backoff,
    ) {
        use crate::providers::Preflight;
        let Gate::Asking { attempt, polls } = self.gate else {
            return;
        };
        self.gate = match answer {
            Preflight::Done { balances, results } => {
                self.preflight = results;
                match self.preflight_passes(balances.as_ref()) {
                    Ok(()) => Gate::Open,
                    Err(why) => Gate::Closed {
                        why,
                        unreachable: false,
                    },
                }
            }
            Preflight::Failed(m) => Gate::Closed {
                why: format!("{m}; nothing was sent"),
                unreachable: false,
            },
            Preflight::Again(next) if polls < PREFLIGHT_POLLS => Gate::Due {
                attempt,
                polls: polls + 1,
                at: now + PREFLIGHT_POLL.as_millis() as u64,
                next: Some(next),
            },
            Preflight::Again(_) => Gate::Closed {
                why: "the preflight did not finish; nothing was sent".into(),
                unreachable: false,
            },
            Preflight::Retry(m) => match super::backoff::delay(policy, attempt, None) {
                Some(d) => Gate::Due {
                    attempt: attempt + 1,
                    polls,
                    at: now + d.as_millis() as u64,
                    next: None,
                },
                None => Gate::Closed {
                    why: format!("{m}; nothing was sent"),
                    unreachable,
                },
            },
        };
    }

    /// Every item's requests find the preflight results they read, and `balances` (when the
    /// preflight asked for them) cover what this run still has to pay; Err says what is wrong.
    /// A currency the balance answer does not list has nothing to pay from: zero, not "fine".
    fn preflight_passes(
        &self,
        balances: Option<&BTreeMap<String, rust_decimal::Decimal>>,
    ) -> Result<(), String> {
        // Every item's requests are made from the same templates, so they read the same
        // preflight results: those of the first item still to be sent are every item's.
        let first = (0..self.items.len()).find(|&i| match self.place[i] {
            Place::Untouched => true,
            Place::Live => !self.live[&i].state.is_final(),
            Place::Out => false,
        });
        if !self.preflight.is_empty()
            && let Some(first) = first
        {
            let it = &self.items[first];
            let planned = self.planned(first).map_err(|e| match e {
                Unmade::Source(why) | Unmade::Missing(why) => format!("{why}; nothing was sent"),
            })?;
            {
                let mut missing = Vec::new();
                let only_preflight = |id: &str, path: &str| {
                    self.preflight_value(id, path)
                        .or_else(|| (!self.preflight.contains_key(id)).then(|| Value::Null))
                };
                for r in planned.payload.iter().chain(planned.steps.iter()) {
                    if r.get().contains("${result.") {
                        crate::providers::fill_rendered(r, &only_preflight, &mut missing);
                    }
                }
                if let Some(m) = missing.first() {
                    return Err(format!(
                        "the preflight answer has no `{m}`, which item {} needs; nothing was sent",
                        it.id
                    ));
                }
            }
        }
        let Some(balances) = balances else {
            return Ok(());
        };
        let mut short = Vec::new();
        for (currency, need) in &self.owed {
            let have = balances.get(&currency.to_ascii_uppercase()).copied();
            if have.is_none_or(|h| h < *need) {
                short.push(match have {
                    Some(h) => format!(
                        "{currency}: balance {h}, below the {need} this run still has to pay"
                    ),
                    None => format!(
                        "{currency}: the provider reports no {currency} balance (available: {}), and this run still has to pay {need}",
                        if balances.is_empty() {
                            "none".to_string()
                        } else {
                            balances
                                .iter()
                                .map(|(c, a)| format!("{c} {a}"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        }
                    ),
                });
            }
        }
        match short.is_empty() {
            true => Ok(()),
            false => Err(format!(
                "not enough balance to pay this batch; nothing was sent\n  {}\n  hint: top up, split the batch, or ask getBalance for every currency (omit its `currency`)",
                short.join("\n  ")
            )),
        }
    }

    /// The operation of unit `u`.
    pub(super) fn op_of(&self, u: usize) -> &str {
        match self.unit(u).1 {
            0 => &self.root_op,
            k => &self.steps[k - 1].op,
        }
    }

    /// `contradiction` of `claims` with what unit `u` sent.
    pub(super) fn contradicts(
        &self,
        u: usize,
        claims: &crate::providers::Claims,
    ) -> Option<String> {
        let op = self.op_of(u);
        contradiction(&self.sent(u), claims, &|ty| {
            self.adapter.names_operation(op, ty)
        })
    }

    /// Submitted units waiting for exactly `reference`.
    pub(super) fn waiting_for<'a>(
        &'a self,
        reference: &'a str,
    ) -> impl Iterator<Item = usize> + 'a {
        self.groups
            .get(reference)
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .copied()
            .filter(move |&i| self.rec(i).state.reference() == Some(reference))
    }

    /// Units a report about the request accepted under `reference` concerns: those waiting for
    /// exactly it, and those that ended since they were accepted under it (a late copy, or a
    /// contradiction).
    pub(super) fn concerned<'a>(&'a self, reference: &'a str) -> impl Iterator<Item = usize> + 'a {
        self.groups
            .get(reference)
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .copied()
            .filter(move |&i| {
                let r = self.rec(i);
                r.state.is_final() || r.state.reference() == Some(reference)
            })
    }

    /// Checks an authentic notice against this run before it is journaled: it must concern an
    /// item of the batch — for a reference, one waiting for exactly it; for a lookup's answer, a
    /// lookup payrun made — and agree with what the item sent. Err says why it is not taken
    /// (it then changes nothing).
    pub(super) fn vet(&self, notice: &Notice) -> Result<(), Rejection> {
        match notice {
            Notice::Item { key, .. } => match self.unit_by_key(key) {
                // An outcome is about a request payrun recorded as sent, or about nothing.
                Some(i) if self.rec(i).state.was_sent() => Ok(()),
                Some(i) => Err(Rejection::Never(format!(
                    "a notification about item {}, for which nothing was sent",
                    self.rec(i).id
                ))),
                None => Err(Rejection::Never(
                    "a notification about a key not in this batch".into(),
                )),
            },
            Notice::Reference {
                candidates, claims, ..
            } => {
                let mut waiting = false;
                for c in candidates {
                    // Waiting for it, or settled since it was accepted under it (a late copy).
                    for i in self.concerned(c) {
                        if let Some(why) = self.contradicts(i, claims) {
                            return Err(Rejection::Never(format!(
                                "a notification about item {} that contradicts it: {why}",
                                self.rec(i).id
                            )));
                        }
                        waiting = true;
                    }
                }
                match waiting {
                    true => Ok(()),
                    false => Err(Rejection::NotYet(
                        "a notification for a request no item of this run waits for \
                         (unknown responseid or payment)"
                            .into(),
                    )),
                }
            }
            Notice::Subject {
                found,
                answered,
                references,
                ..
            } => {
                let rid = answered.as_ref().map(|(rid, _)| rid.as_str());
                let reconciles = references
                    .iter()
                    .any(|r| self.waiting_for(r).next().is_some());
                for (key, _, claims) in found {
                    if let Some(i) = self.unit_by_key(&key)
                        && let Some(why) = self.contradicts(i, claims)
                    {
                        return Err(Rejection::Never(format!(
                            "a payment notification that contradicts item {}: {why}",
                            self.rec(i).id
                        )));
                    }
                }
                // Taken only as the answer to a lookup payrun made (or a reconciliation item's
                // own request): a listing posted by anyone else proves nothing.
                let ours = rid
                    .is_some_and(|rid| self.asked.contains_key(rid) || self.answered.contains(rid));
                if reconciles || ours {
                    Ok(())
                } else {
                    Err(Rejection::NotYet(
                        "a payment notification answering no lookup of this run \
                         (unknown responseid)"
                            .into(),
                    ))
                }
            }
            Notice::Group(_) | Notice::Refused(..) | Notice::Ignored => Ok(()),
        }
    }

    /// Acts on a notice (vetted before it was journaled, or replayed from the journal).
    pub(super) fn take(
        &mut self,
        notice: Notice,
        now: Millis,
        policy: &crate::manifest::RetryPolicy,
        timings: &Timings,
        adapter: &dyn Adapter,
    ) {
        let observe = |book: &mut Book, i: usize, verdict: Verdict| {
            tracing::debug!(item = %book.rec(i).id, ?verdict, "notification");
            book.apply(
                i,
                Event::Observed { verdict, now },
                policy,
                timings,
                adapter,
            );
        };
        match notice {
            // One more observation; duplicates and stale ones are absorbed by the state machine.
            Notice::Item { key, verdict } => {
                if let Some(i) = self.unit_by_key(&key) {
                    observe(self, i, verdict);
                }
            }
            // Ask about that submission's items now instead of at their next poll.
            Notice::Group(group) => {
                for i in self.groups.get(&group).cloned().unwrap_or_default() {
                    if let State::Submitted { reference, .. } = &self.rec(i).state
                        && adapter.reference_group(reference).0 == group
                        && !self.in_flight.contains(&i)
                    {
                        self.lookups.push(i);
                    }
                }
            }
            // The outcome of an accepted request, for the item waiting for exactly it.
            // The outcome of an accepted request, for the item waiting for exactly it — or that
            // ended since it was accepted under it: a later report that contradicts the end is
            // news (the machine keeps a copy of the same outcome from changing anything).
            Notice::Reference {
                candidates,
                verdict,
                ..
            } => {
                // An unsigned report of a failure about an item still waiting: asked about
                // through a lookup instead, whose answer (taken only as the answer to payrun's
                // own lookup) settles it.
                let confirm = timings.confirm_failures && matches!(verdict, Verdict::Failed { .. });
                for c in &candidates {
                    let concerned: Vec<usize> = self.concerned(c).collect();
                    for i in concerned {
                        if confirm && !self.rec(i).state.is_final() {
                            tracing::info!(item = %self.rec(i).id, "a reported failure, confirmed by a lookup");
                            self.lookups.push(i);
                        } else {
                            observe(self, i, verdict.clone());
                        }
                    }
                }
            }
            // A lookup's answer about a subject: the items it lists; an item whose own request
            // was this lookup (a reconciliation); and the items in doubt that asked through it
            // and are not listed (never processed: sent again with the same key).
            Notice::Subject {
                found,
                answered,
                references,
                ..
            } => {
                let mut listed = HashSet::new();
                if let Some((_, verdict)) = &answered {
                    for r in &references {
                        let waiting: Vec<usize> = self.waiting_for(r).collect();
                        for i in waiting {
                            listed.insert(i);
                            observe(self, i, verdict.clone());
                        }
                    }
                }
                for (key, verdict, _) in found {
                    if let Some(i) = self.unit_by_key(&key) {
                        listed.insert(i);
                        observe(self, i, verdict);
                    }
                }
                // Not listed: what that means is the machine's to say (a provider without
                // idempotency needs the settle window and a second lookup).
                if let Some((rid, _)) = &answered
                    && let Some((units, at)) = self.asked.remove(rid)
                {
                    self.answered.insert(rid.clone());
                    for i in units {
                        if !listed.contains(&i)
                            && matches!(self.rec(i).state, State::InDoubt { .. })
                        {
                            observe(self, i, Verdict::Unlisted { asked: at });
                        }
                    }
                }
            }
            Notice::Refused(..) | Notice::Ignored => {}
        }
    }
}

impl<'a> Book<'a> {
    /// The bookkeeping of a run over `items`, resuming from the records `stored` (by store
    /// index): every node's record, the steps each is followed by, and what is due — nodes
    /// left `Sending` by a stopped run are in doubt, nodes that ended get the steps that follow
    /// them. Nothing is committed yet.
    pub(super) fn new(
        flow: &'a Flow,
        items: &'a [PlannedItem],
        render: &'a dyn Render,
        pager: &'a dyn Pager,
        adapter: &'a dyn Adapter,
        now: Millis,
        timings: &Timings,
    ) -> Result<Book<'a>, StoreError> {
        let policy = &flow.manifest.retry;
        // What the store holds, read one record at a time: a run holds only the records of
        // the nodes not ended; the rest are counted and let go.
        let mut live: HashMap<usize, Record> = HashMap::new();
        let mut place = vec![Place::Untouched; items.len()];
        let mut step_units: Vec<(usize, usize)> = Vec::new();
        let mut tally = Tally::default();
        let mut ended: Vec<usize> = Vec::new();
        pager.each(&mut |index, r| {
            let u = match index.checked_sub(items.len() as u64) {
                None => index as usize,
                Some(_) => {
                    // Delayed steps already under way, after the items.
                    let (step, item) = super::store::split_index(index);
                    if step == 0 || item >= items.len() {
                        return;
                    }
                    step_units.push((item, step));
                    place.push(Place::Untouched);
                    items.len() + step_units.len() - 1
                }
            };
            tally.add(index, &r);
            if r.state.is_final() {
                place[u] = Place::Out;
                ended.push(u);
            } else {
                place[u] = Place::Live;
                live.insert(u, r);
            }
        })?;
        for (i, it) in items.iter().enumerate() {
            if place[i] == Place::Untouched {
                tally.add_untouched(&it.money);
            }
        }
        let client_run = flow.provider.tree == crate::schema::TreeExecution::Client;
        let flow_steps = flow.steps();
        // The step each task is sent in (0: the item's first request).
        let step_of: HashMap<&str, usize> = flow_steps
            .iter()
            .enumerate()
            .map(|(k, s)| (s.task.id.as_str(), k + 1))
            .chain(flow.tasks.iter().map(|t| (t.id.as_str(), 0)))
            .collect();
        let steps: Vec<StepInfo> = flow_steps
            .iter()
            .map(|s| StepInfo {
                path: s.task.tree_path.clone(),
                after: s.after,
                after_id: s.after_task.id.clone(),
                link: s.link,
                delay: s.delay,
                settle: s.settle,
                op: s.task.op.clone(),
                reads: match client_run {
                    true => s
                        .ancestors
                        .iter()
                        .map(|(t, _)| (t.id.clone(), step_of[t.id.as_str()]))
                        .collect(),
                    false => vec![(s.after_task.id.clone(), s.after)],
                },
                typed: s
                    .task
                    .bindings
                    .iter()
                    .filter(|b| matches!(b.value, crate::compile::Bound::Result { .. }))
                    .map(|b| (b.path.clone(), flow.op(&s.task.op).fields[b.field].wire))
                    .collect(),
            })
            .collect();
        let mut followers = vec![Vec::new(); steps.len() + 1];
        for (k, s) in steps.iter().enumerate() {
            followers[s.after].push(k + 1);
        }
        let mut read = vec![false; steps.len() + 1];
        for s in &steps {
            for (_, at) in &s.reads {
                read[*at] = true;
            }
        }
        let root = flow.tasks.first();
        let mut book = Book {
            flow,
            items,
            render,
            planned: std::sync::Mutex::new(HashMap::new()),
            client_run,
            root_op: root.map(|t| t.op.clone()).unwrap_or_default(),
            root_settle: match (client_run, root) {
                (true, Some(t)) => flow.op(&t.op).settle,
                _ => Settle::Lookup,
            },
            read,
            adapter,
            keyed_notices: false,
            gate: match adapter.preflight("") {
                Some(_) => Gate::Due {
                    attempt: 1,
                    polls: 0,
                    at: now,
                    next: None,
                },
                None => Gate::Open,
            },
            preflight: BTreeMap::new(),
            owed: BTreeMap::new(),
            open: live.values().filter(|r| is_open(&r.state)).count()
                + place.iter().filter(|p| **p == Place::Untouched).count(),
            unit_at: step_units
                .iter()
                .enumerate()
                .map(|(k, &iu)| (iu, items.len() + k))
                .collect(),
            step_units,
            steps,
            followers,
            live,
            place,
            pager,
            fault: std::sync::Mutex::new(None),
            tally,
            ended: Vec::new(),
            ready_from: 0,
            timers: BTreeSet::new(),
            in_flight: HashSet::new(),
            groups: HashMap::new(),
            changed: Vec::new(),
            sends: Vec::new(),
            lookups: Vec::new(),
            by_key: KeyIndex::default(),
            asked: HashMap::new(),
            answered: HashSet::new(),
            applied: None,
            held: Vec::new(),
            notices: NoticeCounts::default(),
        };
        // A resumed run: whatever was being sent when it stopped is now in doubt; whatever waited
        // keeps its due time (pending backoffs are respected).
        let mut held: Vec<usize> = book.live.keys().copied().collect();
        held.sort_unstable();
        for i in held {
            match &book.live[&i].state {
                State::Planned => {}
                State::Sending { .. } | State::NeedsReview { .. } => {
                    if let Some(reference) = book.live[&i].state.reference() {
                        let (group, _) = adapter.reference_group(reference);
                        book.groups.entry(group).or_default().push(i);
                    }
                    book.apply(i, Event::Resume { now }, policy, timings, adapter)
                }
                // Accepted and waiting: whatever the provider told while no run listened is lost,
                // so each is asked about once now.
                State::Submitted { reference, .. } => {
                    let (group, _) = adapter.reference_group(reference);
                    book.groups.entry(group).or_default().push(i);
                    book.apply(i, Event::Resume { now }, policy, timings, adapter);
                }
                _ => book.schedule(i),
            }
        }
        // Steps that should follow what ended before (a batch started by an older payrun).
        for u in ended {
            if !book.followers[book.unit(u).1].is_empty() {
                book.follow(u, now);
            }
        }
        book.check_fault()?;
        Ok(book)
    }
}

#[cfg(test)]
mod graph_tests {
    //! The runner's bookkeeping of item graphs driven by random answers, lost answers and
    //! crashes (a new `Book` from what was committed), against the invariants that make
    //! "exactly once" hold: a node is never sent again while a request of it may have been
    //! processed and nothing settled that; a node is sent only once its own `Sending` and its
    //! parent's outcome are durable, on the branch that outcome took; every item's graph ends
    //! with each node final or with a person.

    use super::*;
    use crate::providers::payonic::Payonic;
    use serde_json::json;
    use std::sync::Arc;

    const FLOW: &str = r#"batch: graph-test
provider: payonic
environment: sandbox
credentials: {api_key: K}
items: {source: items.csv}
flow:
  - id: capture
    op: capture
    payload:
      paymentid: ${item.p}
      amount: ${item.amount}
      currency: DKK
    success:
      - id: refund
        op: refund
        payload:
          paymentid: ${result.capture.paymentid}
          amount: ${item.back}
          currency: DKK
        success:
          - id: again
            op: refund
            delay: 10m
            payload:
              paymentid: ${result.capture.paymentid}
              amount: ${result.refund.amount}
              currency: DKK
    fail:
      - id: release
        op: void
        payload:
          paymentid: ${item.p}
          amount: ${item.amount}
          currency: DKK
notifications: {listen: 127.0.0.1:8799, public_url: "https://acme.example/payrun"}
"#;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn flow() -> Flow {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("items.csv"),
            "id,p,amount,back\na,p1,10.00,2.00\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("manifest.yaml"), FLOW).unwrap();
        crate::pipeline::prepare(
            &dir.path().join("manifest.yaml"),
            &crate::schema::Registry::Embedded,
        )
        .map_err(|f| f.diagnostics)
        .expect("the graph compiles")
        .flow
    }

    /// Requests rendered up front, by item index: the tests' stand-in for `rows::FromRows`.
    struct Prerendered(Vec<(Vec<Rendered>, Vec<Rendered>)>);

    impl Render for Prerendered {
        fn planned(&self, it: &PlannedItem) -> Result<Planned, String> {
            let (payload, steps) = self.0.get(it.index as usize).ok_or("no such item")?;
            Ok(Planned {
                payload: payload.clone(),
                steps: steps.clone(),
            })
        }
    }

    fn items(flow: &Flow, n: usize) -> (Vec<PlannedItem>, Prerendered) {
        let (items, requests) = (0..n)
            .map(|i| {
                let key = crate::keys::item_key("graph-test", &format!("i{i}"));
                let steps = flow
                    .steps()
                    .iter()
                    .map(|s| {
                        let amount = match s.task.id.as_str() {
                            "again" => json!("${result.refund.amount}"),
                            _ => json!(200),
                        };
                        crate::providers::keep(&json!({
                            "paymentid": match s.task.id.as_str() {
                                "release" => json!(format!("p{i}")),
                                _ => json!("${result.capture.paymentid}"),
                            },
                            "amount": amount,
                            "note": crate::keys::KEYED,
                        }))
                    })
                    .collect();
                let payload = vec![crate::providers::keep(&json!({
                    "paymentid": format!("p{i}"), "amount": 1000, "note": crate::keys::KEYED
                }))];
                let item = PlannedItem {
                    id: format!("i{i}"),
                    key: key.into(),
                    digest: "".into(),
                    line: i as u64 + 2,
                    index: i as u64,
                    offset: 0,
                    money: Default::default(),
                };
                (item, (payload, steps))
            })
            .unzip();
        (items, Prerendered(requests))
    }

    /// A Payonic adapter with no listener: nothing is heard but answers.
    fn unheard(flow: &Flow) -> Payonic {
        Payonic {
            flow: Arc::new(flow.clone()),
            api_key: "k".into(),
            listener: None,
            token: "0123456789abcdef0123456789abcdef".into(),
            per_operation_hosts: false,
            note_secret: None,
        }
    }

    fn timings() -> Timings {
        Timings {
            propagation: Duration::from_secs(5),
            poll_every: Duration::from_secs(60),
            review_every: Duration::from_secs(600),
            max_lookups: 10,
            max_polls: Some(5),
            poll_backoff: 2.0,
            settle: Duration::from_secs(600),
            reversals: false,
            confirm_failures: true,
        }
    }

    /// What the test knows of a unit's requests: one may have been processed, and the
    /// settlement observed since.
    #[derive(Default, Clone)]
    struct Doubt {
        maybe: bool,
        evidence: u32,
    }

    /// What was committed, by store index: what a new run (after a crash) starts from, and
    /// where the book reads back the records of the nodes that ended.
    #[derive(Default)]
    struct Durable(std::sync::Mutex<HashMap<u64, Record>>);

    impl Pager for Durable {
        fn record(&self, index: u64) -> Result<Option<Record>, StoreError> {
            Ok(self.0.lock().unwrap().get(&index).cloned())
        }
        fn each(&self, f: &mut dyn FnMut(u64, Record)) -> Result<(), StoreError> {
            let mut all: Vec<(u64, Record)> = self
                .0
                .lock()
                .unwrap()
                .iter()
                .map(|(k, r)| (*k, r.clone()))
                .collect();
            all.sort_unstable_by_key(|(k, _)| *k);
            for (k, r) in all {
                f(k, r);
            }
            Ok(())
        }
    }

    impl Durable {
        fn state(&self, index: u64) -> State {
            self.0.lock().unwrap()[&index].state.clone()
        }
    }

    fn commit(book: &mut Book, durable: &Durable) {
        book.check_fault().expect("every record read back");
        book.changed.sort_unstable();
        book.changed.dedup();
        for &i in &book.changed {
            durable
                .0
                .lock()
                .unwrap()
                .insert(book.store_index(i), book.live[&i].clone());
        }
        book.committed();
    }

    fn succeeded(paymentid: String, amount: u64) -> Verdict {
        Verdict::Succeeded {
            ids: BTreeMap::new(),
            result: Some(json!({"paymentid": paymentid, "amount": amount.to_string()})),
        }
    }

    use std::collections::BTreeMap;

    /// A random answer to a send (`benign`: the provider answers, at once, with an outcome).
    fn answer(rng: &mut Rng, benign: bool, pay: String) -> Verdict {
        match (benign, rng.below(8)) {
            (true, 0) => Verdict::Failed {
                code: "51".into(),
                description: "declined".into(),
            },
            (true, _) => succeeded(pay, 200),
            (false, 0) => Verdict::InDoubt,
            (false, 1) => Verdict::RetryLater {
                class: crate::execute::backoff::ErrorClass::RateLimited,
                retry_after: None,
            },
            (false, 2) => Verdict::Failed {
                code: "51".into(),
                description: "declined".into(),
            },
            (false, 3) => Verdict::NeedsReview {
                code: "x".into(),
                description: "odd".into(),
            },
            (false, 4 | 5) => Verdict::Accepted {
                reference: format!("r{}@{pay}", rng.next() % 1000),
            },
            _ => succeeded(pay, 200),
        }
    }

    /// A random answer to a lookup, asked at `now`.
    fn observation(rng: &mut Rng, benign: bool, now: Millis, pay: String) -> Verdict {
        match (benign, rng.below(7)) {
            (true, _) => succeeded(pay, 200),
            (false, 0) => Verdict::Unknown,
            (false, 1) => Verdict::Unlisted { asked: now },
            (false, 2) => Verdict::Pending,
            (false, 3) => Verdict::Failed {
                code: "05".into(),
                description: "declined".into(),
            },
            (false, 4) => Verdict::RetryLater {
                class: crate::execute::backoff::ErrorClass::Network,
                retry_after: None,
            },
            _ => succeeded(pay, 200),
        }
    }

    #[test]
    fn no_item_starts_before_the_batchs_preflight_passed_and_its_results_are_filled_in_when_sent() {
        use crate::providers::Preflight;
        let flow = flow();
        let adapter = unheard(&flow);
        let (mut items, mut requests) = items(&flow, 2);
        requests.0[0].0 = vec![crate::providers::keep(
            &json!({"paymentid": "p0", "amount": "${result.bal.data.EUR}"}),
        )];
        items[0].money = [("50.00", "EUR")].into_iter().collect();
        items[1].money = [("60.00", "EUR")].into_iter().collect();
        let t = timings();
        let policy = flow.manifest.retry.default.clone();
        let asking = |b: &mut Book| {
            b.gate = Gate::Due {
                attempt: 1,
                polls: 0,
                at: 0,
                next: None,
            };
            assert!(!b.gate_open());
            assert!(b.preflight_due(0).is_some());
        };
        let owed: BTreeMap<String, rust_decimal::Decimal> =
            [("EUR".to_string(), rust_decimal::Decimal::new(11000, 2))].into();
        let balances = |eur: i64| {
            Some(BTreeMap::from([(
                "EUR".to_string(),
                rust_decimal::Decimal::new(eur, 2),
            )]))
        };
        let nothing = Durable::default();
        let results = BTreeMap::from([("bal".to_string(), json!({"data": {"EUR": "110.00"}}))]);
        // Not enough for what this run still has to pay: closed, nothing sent.
        let mut book = Book::new(&flow, &items, &requests, &nothing, &adapter, 0, &t).unwrap();
        book.owed = owed.clone();
        asking(&mut book);
        book.preflight_answer(
            Preflight::Done {
                balances: balances(10999),
                results: results.clone(),
            },
            false,
            0,
            &policy,
        );
        assert!(
            matches!(&book.gate, Gate::Closed { why, unreachable: false } if why.contains("EUR: balance 109.99")),
            "{}",
            match &book.gate {
                Gate::Closed { why, .. } => why.clone(),
                _ => "open".into(),
            }
        );
        // Not finished: asked again with the follow-up, after a short wait.
        let mut book = Book::new(&flow, &items, &requests, &nothing, &adapter, 0, &t).unwrap();
        book.owed = owed.clone();
        asking(&mut book);
        book.preflight_answer(Preflight::Retry("busy".into()), false, 0, &policy);
        assert!(
            book.preflight_at().is_some_and(|at| at > 0),
            "retried after the policy's delay"
        );
        // Enough: open, and the first item's request reads the balance.
        let mut book = Book::new(&flow, &items, &requests, &nothing, &adapter, 0, &t).unwrap();
        book.owed = owed;
        asking(&mut book);
        book.preflight_answer(
            Preflight::Done {
                balances: balances(11000),
                results,
            },
            false,
            0,
            &policy,
        );
        assert!(book.gate_open());
        let sent: Value = serde_json::from_str(book.payload_of(0).unwrap()[0].get()).unwrap();
        assert_eq!(sent["amount"], "110.00");
    }

    #[test]
    fn random_answers_losses_and_crashes_never_break_the_graph_invariants() {
        let flow = flow();
        let adapter = Payonic {
            flow: Arc::new(flow.clone()),
            api_key: "k".into(),
            listener: Some("https://acme.example/payrun".into()),
            token: "0123456789abcdef0123456789abcdef".into(),
            per_operation_hosts: false,
            note_secret: Some(b"secret".to_vec()),
        };
        let t = timings();
        let policy = flow.manifest.retry.clone();
        let flow_steps = flow.steps();
        for seed in 1..=150u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let (items, requests) = items(&flow, 3);
            let durable = Durable::default();
            // Units by store index, so they survive a crash's renumbering.
            let mut doubt: HashMap<u64, Doubt> = HashMap::new();
            let mut now: Millis = 1_000_000;
            let mut book =
                Book::new(&flow, &items, &requests, &durable, &adapter, now, &t).unwrap();
            commit(&mut book, &durable);
            let mut rounds = 0;
            loop {
                rounds += 1;
                let benign = rounds > 60;
                assert!(
                    rounds < 4000,
                    "seed {seed}: the graphs never ended: {:?}",
                    book.live
                        .values()
                        .map(|r| (&r.step, &r.state))
                        .filter(|(_, s)| is_open(s))
                        .collect::<Vec<_>>()
                );
                // A crash: everything not committed is lost; a new run resumes.
                if !benign && rng.below(15) == 0 {
                    book =
                        Book::new(&flow, &items, &requests, &durable, &adapter, now, &t).unwrap();
                    commit(&mut book, &durable);
                }
                for i in book.due(now) {
                    book.apply(i, Event::Tick { now }, &policy, &t, &adapter);
                }
                while let Some(i) = book.pop_ready() {
                    book.apply(i, Event::Tick { now }, &policy, &t, &adapter);
                }
                commit(&mut book, &durable);
                let mut sends = std::mem::take(&mut book.sends);
                sends.sort_unstable();
                sends.dedup();
                sends.retain(|&u| matches!(book.rec(u).state, State::Sending { .. }));
                let mut lookups = std::mem::take(&mut book.lookups);
                lookups.sort_unstable();
                lookups.dedup();
                lookups.retain(|&u| !book.rec(u).state.is_final());
                for u in sends {
                    let at = book.store_index(u);
                    // Its own `Sending`, and its parent's end on its branch, are durable.
                    assert!(
                        matches!(durable.state(at), State::Sending { .. }),
                        "seed {seed}: sent before its Sending was committed"
                    );
                    let (item, step) = book.unit(u);
                    if step > 0 {
                        let s = &book.steps[step - 1];
                        let parent = match s.after {
                            0 => item as u64,
                            a => crate::execute::store::step_index(a, item),
                        };
                        let taken = match &durable.state(parent) {
                            State::Succeeded { .. } => crate::manifest::Link::Success,
                            State::Failed { .. } => crate::manifest::Link::Fail,
                            other => panic!("seed {seed}: sent while its parent is {other:?}"),
                        };
                        assert!(
                            s.link == taken || s.link == crate::manifest::Link::Always,
                            "seed {seed}: a node on the branch not taken was sent"
                        );
                        assert!(
                            book.step_payload(u).is_ok(),
                            "seed {seed}: sent without the results it reads"
                        );
                    }
                    let d = doubt.entry(at).or_default();
                    assert!(
                        !d.maybe || d.evidence > 0,
                        "seed {seed}: unit {at:x} sent again while a request of it may have been processed and nothing settled it"
                    );
                    let verdict = answer(&mut rng, benign, format!("p{item}"));
                    // A request may have been processed unless the provider said it was not.
                    *d = Doubt {
                        maybe: !matches!(verdict, Verdict::RetryLater { .. }),
                        evidence: 0,
                    };
                    // The answer lost on the way (a timeout): in doubt.
                    let verdict = match !benign && rng.below(6) == 0 {
                        true => Verdict::InDoubt,
                        false => verdict,
                    };
                    book.apply(u, Event::Sent { verdict, now }, &policy, &t, &adapter);
                }
                // Routed as the runner routes them: each by its state and its settlement rule.
                let asks = book.route(&lookups, now, &policy, &t, &adapter).unwrap();
                let asked: Vec<usize> = asks
                    .iter()
                    .flat_map(|a| match a {
                        Ask::Group { members, .. } => members.iter().map(|m| m.0).collect(),
                        Ask::Resend { unit, .. } | Ask::Key { unit, .. } => vec![*unit],
                    })
                    .collect();
                for u in asked {
                    book.in_flight.remove(&u);
                    let (item, _) = book.unit(u);
                    let verdict = observation(&mut rng, benign, now, format!("p{item}"));
                    if matches!(verdict, Verdict::Unknown | Verdict::Unlisted { .. }) {
                        doubt.entry(book.store_index(u)).or_default().evidence += 1;
                    }
                    book.apply(u, Event::Observed { verdict, now }, &policy, &t, &adapter);
                }
                commit(&mut book, &durable);
                if book.open == 0 && !book.any_ready() && book.timers.is_empty() {
                    break;
                }
                if book.open == 0 && benign {
                    break;
                }
                now += match benign {
                    true => 700_000,
                    false => rng.below(120_000),
                };
            }
            // Every node of every graph ended, or waits for a person; every step whose parent
            // ended exists, run or skipped as its branch says.
            for u in 0..book.units() {
                let r = book.rec(u);
                assert!(
                    r.state.is_final() || matches!(r.state, State::NeedsReview { .. }),
                    "seed {seed}: unit {u} left {:?}",
                    r.state
                );
            }
            for item in 0..items.len() {
                for (k, s) in flow_steps.iter().enumerate() {
                    let parent = match s.after {
                        0 => Some(book.rec(item).state.clone()),
                        a => book
                            .unit_at
                            .get(&(item, a))
                            .map(|&p| book.rec(p).state.clone()),
                    };
                    let child = book
                        .unit_at
                        .get(&(item, k + 1))
                        .map(|&c| book.rec(c).state.clone());
                    match (parent.as_ref(), child.as_ref()) {
                        (Some(p), None) if p.is_final() => {
                            panic!(
                                "seed {seed}: item {item}'s `{}` was never created",
                                s.task.id
                            )
                        }
                        (Some(State::Succeeded { .. }), Some(State::Skipped { .. }))
                            if s.link == crate::manifest::Link::Success =>
                        {
                            panic!("seed {seed}: `{}` skipped on the branch taken", s.task.id)
                        }
                        (Some(State::Failed { .. }), Some(c))
                            if s.link == crate::manifest::Link::Success
                                && !matches!(c, State::Skipped { .. }) =>
                        {
                            panic!("seed {seed}: `{}` ran on the branch not taken", s.task.id)
                        }
                        _ => {}
                    }
                }
            }
            // The run holds only what has not ended; its counts are the store's.
            assert!(
                book.live.values().all(|r| !r.state.is_final()),
                "seed {seed}: a record that ended and was committed is still held"
            );
            let mut stored = Tally::default();
            durable.each(&mut |i, r| stored.add(i, &r)).unwrap();
            for (i, it) in items.iter().enumerate() {
                if !durable.0.lock().unwrap().contains_key(&(i as u64)) {
                    stored.add_untouched(&it.money);
                }
            }
            let (kept, read) = (book.status("b", None), stored.view("b", None));
            assert_eq!(
                (&kept.states, &kept.steps, &kept.amounts, kept.failed.len()),
                (&read.states, &read.steps, &read.amounts, read.failed.len()),
                "seed {seed}: the counts kept as states changed differ from the store's"
            );
        }
    }

    #[test]
    fn an_in_doubt_node_whose_operation_offers_no_safe_settlement_goes_to_a_person_never_sent_again()
     {
        let flow = flow();
        let adapter = unheard(&flow);
        let t = timings();
        let policy = flow.manifest.retry.clone();
        let (items, requests) = items(&flow, 1);
        let durable = Durable::default();
        let mut book = Book::new(&flow, &items, &requests, &durable, &adapter, 0, &t).unwrap();
        book.root_settle = Settle::Review;
        let i = book.pop_ready().unwrap();
        book.apply(i, Event::Tick { now: 0 }, &policy, &t, &adapter);
        commit(&mut book, &durable);
        assert_eq!(std::mem::take(&mut book.sends), vec![i]);
        let verdict = Verdict::InDoubt;
        book.apply(i, Event::Sent { verdict, now: 1 }, &policy, &t, &adapter);
        commit(&mut book, &durable);
        // Its lookup comes due: routed to a person, not to the provider.
        let later = 3_600_000;
        for u in book.due(later) {
            book.apply(u, Event::Tick { now: later }, &policy, &t, &adapter);
        }
        let lookups = std::mem::take(&mut book.lookups);
        assert_eq!(lookups, vec![i]);
        let asks = book.route(&lookups, later, &policy, &t, &adapter).unwrap();
        assert!(
            asks.is_empty(),
            "nothing is asked of or sent to the provider"
        );
        assert!(matches!(book.rec(i).state, State::NeedsReview { .. }));
        assert!(!book.in_flight.contains(&i));
        assert!(book.sends.is_empty());
    }

    #[test]
    fn a_notification_finds_its_node_by_key_and_an_index_entry_is_confirmed_against_the_record() {
        let flow = flow();
        let adapter = unheard(&flow);
        let t = timings();
        let (items, requests) = items(&flow, 3);
        let durable = Durable::default();
        let mut book = Book::new(&flow, &items, &requests, &durable, &adapter, 0, &t).unwrap();
        book.by_key = KeyIndex::build((0..3).map(|u| (adapter.wire_key(&book.rec(u).key), u)));
        for u in 0..3 {
            let key = book.rec(u).key.clone();
            assert_eq!(book.unit_by_key(&key), Some(u), "as the record holds it");
            let bare = adapter.wire_key(&key);
            assert_eq!(book.unit_by_key(&bare), Some(u), "as the provider sends it");
        }
        // An entry that points at the wrong node (a hash shared by two keys) finds nothing.
        let stranger = crate::keys::item_key("another-batch", "i0");
        book.by_key.insert(&adapter.wire_key(&stranger), 1);
        assert_eq!(book.unit_by_key(&stranger), None);
    }

    /// Reads back nothing: every record it is asked for is lost.
    struct Lost;

    impl Pager for Lost {
        fn record(&self, _: u64) -> Result<Option<Record>, StoreError> {
            Err(StoreError::other("the disk went away"))
        }
        fn each(&self, _: &mut dyn FnMut(u64, Record)) -> Result<(), StoreError> {
            Ok(())
        }
    }

    #[test]
    fn a_record_that_cannot_be_read_back_stops_the_run_before_anything_decided_on_it_is_committed()
    {
        let flow = flow();
        let adapter = unheard(&flow);
        let t = timings();
        let policy = flow.manifest.retry.clone();
        let (items, requests) = items(&flow, 1);
        let mut book = Book::new(&flow, &items, &requests, &Lost, &adapter, 0, &t).unwrap();
        let i = book.pop_ready().unwrap();
        book.apply(i, Event::Tick { now: 0 }, &policy, &t, &adapter);
        let lost = Durable::default();
        commit(&mut book, &lost);
        let verdict = succeeded("p0".into(), 100);
        book.apply(i, Event::Sent { verdict, now: 1 }, &policy, &t, &adapter);
        commit(&mut book, &lost);
        assert_eq!(
            book.place[i],
            Place::Out,
            "let go once its end was committed"
        );
        // A late notification about it: its record is asked for and cannot be read.
        let late = Verdict::Failed {
            code: "x".into(),
            description: "late".into(),
        };
        book.apply(
            i,
            Event::Observed {
                verdict: late,
                now: 2,
            },
            &policy,
            &t,
            &adapter,
        );
        assert!(
            book.check_fault().is_err(),
            "the next commit fails: nothing decided on a stand-in record is written or sent"
        );
    }
}
