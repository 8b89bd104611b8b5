//! The bounded store: copies by key and variant, least recently used first out.
//!
//! One mutex guards the index and the recency list; it is held for a lookup, an insert or an
//! eviction, never across an await, and never while a body is copied or a response is built. A
//! copy is shared (`Arc`), so readers of the same page share one body.
//!
//! Besides the copies it holds, the store counts the bytes of the copies being made (bodies on
//! their way to the client, copied as they pass): those count against the same budget, and may
//! take at most half of it, so that clients holding many slow responses open cannot make the
//! store hold more than its budget, and the copies held always keep at least half of it.
//!
//! A successful write bumps the write generation of its key; a response whose request arrived
//! before that bump is outdated, and is not stored. The generations live in a fixed table
//! indexed by a keyed hash of the key: reading one costs a GET no allocation, and a write to
//! another key of the same slot (one in [`EPOCH_SLOTS`], by chance a client cannot steer) only
//! keeps a copy out that would have been fine.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::copy::StoredCopy;
use super::lru::Lru;
use super::policy::{MAX_VARIANTS_PER_KEY, Policy};
use super::request::{KeyParts, VaryValues};

/// The slots of the write generation table: 4 KiB per store.
pub(crate) const EPOCH_SLOTS: usize = 1024;

/// What every handle to one store shares: the operator's policy, the copies held, and the
/// budget of the copies being made.
pub(crate) struct Shared {
    pub(crate) policy: Policy,
    lru: Mutex<Lru>,
    /// The number of copies, readable without the lock: an empty store costs a write nothing.
    len: AtomicUsize,
    bytes: AtomicUsize,
    /// The bytes held by copies being made.
    in_progress: AtomicUsize,
    /// The write generation of the keys of each slot.
    epochs: Box<[AtomicU32]>,
    /// Picks a key's slot, with keys of the store's own.
    epoch_hasher: RandomState,
}

impl Shared {
    pub(crate) fn new(policy: Policy) -> Self {
        Shared {
            policy,
            lru: Mutex::new(Lru::default()),
            len: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            in_progress: AtomicUsize::new(0),
            epochs: (0..EPOCH_SLOTS).map(|_| AtomicU32::new(0)).collect(),
            epoch_hasher: RandomState::new(),
        }
    }

    fn epoch_slot(&self, key: &dyn KeyParts) -> &AtomicU32 {
        let hash = self.epoch_hasher.hash_one(key);
        // The remainder is below the table's length: the cast back cannot lose a bit that counts.
        &self.epochs[(hash % EPOCH_SLOTS as u64) as usize]
    }

    /// The write generation of `key` now: read when a GET arrives.
    pub(crate) fn epoch(&self, key: &dyn KeyParts) -> u32 {
        self.epoch_slot(key).load(Ordering::SeqCst)
    }

    /// Charges `bytes` more to the copies being made; `false` (nothing charged) when they would
    /// then hold more than half the budget. Evicts the least recently used copies while the
    /// copies held and those being made together are over the budget.
    #[must_use]
    pub(crate) fn reserve(&self, bytes: usize) -> bool {
        let share = self.policy.max_bytes / 2;
        let mut current = self.in_progress.load(Ordering::Relaxed);
        let charged = loop {
            let Some(next) = current.checked_add(bytes).filter(|&next| next <= share) else {
                return false;
            };
            match self.in_progress.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break next,
                Err(actual) => current = actual,
            }
        };
        if self.bytes().saturating_add(charged) > self.policy.max_bytes {
            let mut lru = self.lock();
            self.evict(&mut lru);
            self.publish(&lru);
        }
        true
    }

    /// Gives back what [`reserve`](Self::reserve) charged.
    pub(crate) fn release(&self, bytes: usize) {
        self.in_progress.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// The bytes held by copies being made.
    pub(crate) fn in_progress(&self) -> usize {
        self.in_progress.load(Ordering::Relaxed)
    }

    /// Evicts the least recently used copies until the store is within its bounds: at most
    /// `max_entries` copies, and at most the budget less what copies being made hold.
    fn evict(&self, lru: &mut Lru) {
        let room = self.policy.max_bytes.saturating_sub(self.in_progress());
        while lru.len > 0 && (lru.bytes > room || lru.len > self.policy.max_entries) {
            let tail = lru.tail;
            lru.remove(tail);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Lru> {
        // Nothing panics while the lock is held; were it poisoned, the list is still whole.
        self.lru
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn publish(&self, lru: &Lru) {
        // Sequentially consistent with the write generations: see `insert` and `invalidate`.
        self.len.store(lru.len, Ordering::SeqCst);
        self.bytes.store(lru.bytes, Ordering::Relaxed);
    }

    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Keeps `copy`, replacing the copy of the same key and variant unless that one is the
    /// more recent response (RFC 9111 §4), and evicts the least recently used copies until the
    /// store is within its bounds again. A copy larger than the whole budget is not kept, nor one
    /// whose key a write has invalidated since its request arrived.
    pub(crate) fn insert(&self, copy: StoredCopy) {
        if copy.size > self.policy.max_bytes || self.policy.max_entries == 0 {
            return;
        }
        let epoch = self.epoch_slot(&copy.key);
        if epoch.load(Ordering::SeqCst) != copy.epoch {
            return;
        }
        let copy = Arc::new(copy);
        let mut lru = self.lock();
        let key = copy.key.clone();
        let same_variant = lru.map.get(&key).and_then(|slots| {
            slots
                .iter()
                .copied()
                .find(|&slot| lru.copy(slot).variant.same_as(&copy.variant))
        });
        if let Some(slot) = same_variant {
            // A slower request that finishes late does not put back an older page.
            if lru.copy(slot).newer_than(&copy) {
                return;
            }
            lru.remove(slot);
        }
        if lru
            .map
            .get(&key)
            .is_some_and(|slots| slots.len() >= MAX_VARIANTS_PER_KEY)
        {
            // The least recently used variant of this key makes room.
            let oldest = lru.map[&key]
                .iter()
                .copied()
                .min_by_key(|&slot| lru.slots[slot].used)
                .expect("a full list");
            lru.remove(oldest);
        }
        lru.push_front(copy.clone());
        self.evict(&mut lru);
        self.publish(&lru);
        // A write may have bumped the generation since the check above. Its `invalidate` bumps,
        // then reads the count; this published the count, then reads the generation: one of
        // the two sees the other, so either that write takes the lock after this and drops the
        // copy, or the copy is dropped here.
        if epoch.load(Ordering::SeqCst) != copy.epoch {
            lru.remove_copy(&copy);
            self.publish(&lru);
        }
    }

    /// The newest copy of `key` whose variant `vary` matches, made the most recently used.
    pub(crate) fn find(&self, key: &dyn KeyParts, vary: &VaryValues) -> Option<Arc<StoredCopy>> {
        if self.len() == 0 {
            return None;
        }
        let mut lru = self.lock();
        // A key's slots are in the order they were stored: the newest match is the last.
        let slot = lru
            .map
            .get(key)?
            .iter()
            .rev()
            .copied()
            .find(|&slot| lru.copy(slot).variant.matches(vary))?;
        lru.unlink(slot);
        lru.link_front(slot);
        Some(lru.copy(slot).clone())
    }

    /// Drops `copy`, if the store still holds it.
    pub(crate) fn remove(&self, copy: &Arc<StoredCopy>) {
        let mut lru = self.lock();
        if lru.remove_copy(copy) {
            self.publish(&lru);
        }
    }

    /// Drops every copy of `key` (RFC 9111 §4.4: a successful write invalidates its URI), and
    /// keeps out the responses to reads of it that arrived before now.
    pub(crate) fn invalidate(&self, key: &dyn KeyParts) {
        self.epoch_slot(key).fetch_add(1, Ordering::SeqCst);
        if self.len.load(Ordering::SeqCst) == 0 {
            return;
        }
        let mut lru = self.lock();
        while let Some(&slot) = lru.map.get(key).and_then(|slots| slots.last()) {
            lru.remove(slot);
        }
        self.publish(&lru);
    }

    /// Drops every copy, and keeps out the responses to reads that arrived before now: they
    /// may be pages as they were before whatever called for the clearing.
    pub(crate) fn clear(&self) {
        for epoch in &self.epochs {
            epoch.fetch_add(1, Ordering::SeqCst);
        }
        let mut lru = self.lock();
        *lru = Lru::default();
        self.publish(&lru);
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use bytes::Bytes;
    use http::{HeaderMap, Request, StatusCode};

    /// One policy for every request a test captures: the values a variant depends on are hashed
    /// with its keys, as every request to one store is.
    static CAPTURING: std::sync::LazyLock<Policy> = std::sync::LazyLock::new(Policy::default);

    use super::*;
    use crate::stale::admission::Admission;
    use crate::stale::request::CapturedRequest;

    fn policy(max_bytes: usize, max_entries: usize) -> Policy {
        Policy {
            max_bytes,
            max_entries,
            default_window: Some(Duration::from_secs(60)),
            ..Policy::default()
        }
    }

    fn request(path: &str, encoding: Option<&str>) -> CapturedRequest {
        let mut builder = Request::get(path).header("host", "site.example");
        if let Some(encoding) = encoding {
            builder = builder.header("accept-encoding", encoding);
        }
        CapturedRequest::capture(&CAPTURING, &builder.body(()).unwrap()).unwrap()
    }

    fn copy(policy: &Policy, request: &CapturedRequest, body: &'static [u8]) -> StoredCopy {
        let mut head = HeaderMap::new();
        head.insert("vary", "accept-encoding".parse().unwrap());
        Admission::decide(policy, request, StatusCode::OK, &head)
            .unwrap()
            .complete(Bytes::from_static(body))
            .unwrap()
    }

    /// A response to `request` with these header fields, as the store would admit it now.
    fn admitted(policy: &Policy, request: &CapturedRequest, fields: &[(&str, &str)]) -> Admission {
        let mut head = HeaderMap::new();
        for (name, value) in fields {
            head.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                http::HeaderValue::from_str(value).unwrap(),
            );
        }
        Admission::decide(policy, request, StatusCode::OK, &head).unwrap()
    }

    fn body_of(store: &Shared, request: &CapturedRequest) -> Option<Bytes> {
        store
            .find(&request.key(), &request.vary)
            .map(|copy| copy.body.clone())
    }

    #[tokio::test]
    async fn the_least_recently_used_goes_first_when_the_budget_is_spent() {
        let loose = policy(usize::MAX, usize::MAX);
        let one = copy(&loose, &request("/a", None), &[b'a'; 1000]).size;
        // Room for three copies of this size, not four.
        let store = Shared::new(policy(one * 3 + one / 2, usize::MAX));
        let [a, b, c, d] = ["/a", "/b", "/c", "/d"].map(|path| request(path, None));
        for r in [&a, &b, &c] {
            store.insert(copy(&store.policy, r, &[b'x'; 1000]));
        }
        assert_eq!(store.len(), 3);
        // Reading /a makes /b the least recently used.
        assert!(body_of(&store, &a).is_some());
        store.insert(copy(&store.policy, &d, &[b'x'; 1000]));
        assert_eq!(store.len(), 3);
        assert!(store.bytes() <= store.policy.max_bytes);
        assert!(body_of(&store, &b).is_none(), "/b was evicted");
        for r in [&a, &c, &d] {
            assert!(body_of(&store, r).is_some());
        }
    }

    #[tokio::test]
    async fn the_number_of_copies_is_bounded_and_an_oversized_copy_is_refused() {
        let store = Shared::new(policy(usize::MAX, 2));
        for path in ["/1", "/2", "/3"] {
            store.insert(copy(&store.policy, &request(path, None), b"x"));
        }
        assert_eq!(store.len(), 2);
        assert!(body_of(&store, &request("/1", None)).is_none());

        let small = Shared::new(policy(100, 10));
        small.insert(copy(&small.policy, &request("/big", None), &[0; 200]));
        assert_eq!(small.len(), 0);
        assert_eq!(small.bytes(), 0);
    }

    #[tokio::test]
    async fn variants_live_side_by_side_and_a_new_one_replaces_its_own() {
        let store = Shared::new(policy(usize::MAX, usize::MAX));
        let gzip = request("/p", Some("gzip"));
        let plain = request("/p", None);
        store.insert(copy(&store.policy, &gzip, b"gzip v1"));
        store.insert(copy(&store.policy, &plain, b"plain"));
        store.insert(copy(&store.policy, &gzip, b"gzip v2"));
        assert_eq!(store.len(), 2);
        assert_eq!(body_of(&store, &gzip).unwrap(), "gzip v2");
        assert_eq!(body_of(&store, &plain).unwrap(), "plain");
        assert!(body_of(&store, &request("/p", Some("br"))).is_none());

        // Past the most variants of one key, the least recently used of them goes.
        for i in 0..MAX_VARIANTS_PER_KEY {
            let encoding = format!("e{i}");
            let r = request("/p", Some(&encoding));
            store.insert(copy(&store.policy, &r, b"v"));
        }
        assert_eq!(store.len(), MAX_VARIANTS_PER_KEY);
        assert!(body_of(&store, &gzip).is_none());
        assert!(body_of(&store, &plain).is_none());
    }

    #[tokio::test]
    async fn invalidating_a_key_drops_every_variant_and_nothing_else() {
        let store = Shared::new(policy(usize::MAX, usize::MAX));
        store.insert(copy(&store.policy, &request("/p", Some("gzip")), b"1"));
        store.insert(copy(&store.policy, &request("/p", None), b"2"));
        store.insert(copy(&store.policy, &request("/q", None), b"3"));
        store.invalidate(&request("/p", None).key());
        assert_eq!(store.len(), 1);
        assert_eq!(body_of(&store, &request("/q", None)).unwrap(), "3");

        let q = store.find(&request("/q", None).key(), &request("/q", None).vary);
        store.remove(&q.unwrap());
        assert_eq!(store.len(), 0);
        assert_eq!(store.bytes(), 0);
        // Slots are reused.
        store.insert(copy(&store.policy, &request("/r", None), b"4"));
        assert_eq!(body_of(&store, &request("/r", None)).unwrap(), "4");
        store.clear();
        assert_eq!((store.len(), store.bytes()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn an_older_response_never_replaces_a_newer_copy() {
        let store = Shared::new(policy(usize::MAX, usize::MAX));
        let page = request("/p", None);
        let ago =
            |secs: u64| httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(secs));
        let keep = |admission: Admission, body: &'static [u8]| {
            store.insert(admission.complete(Bytes::from_static(body)).unwrap());
        };

        // One Date: the response whose head arrived first is the older, though it ends last.
        let date = ago(5);
        let slow = admitted(&store.policy, &page, &[("date", &date)]);
        tokio::time::advance(Duration::from_millis(10)).await;
        let quick = admitted(&store.policy, &page, &[("date", &date)]);
        keep(quick, b"quick");
        keep(slow, b"slow");
        assert_eq!(body_of(&store, &page).unwrap(), "quick");
        assert_eq!(store.len(), 1);

        // A later Date is the more recent response, whenever its head arrived.
        let later_date = admitted(&store.policy, &page, &[("date", &ago(1))]);
        tokio::time::advance(Duration::from_millis(10)).await;
        let earlier_date = admitted(&store.policy, &page, &[("date", &ago(3))]);
        keep(later_date, b"dated later");
        keep(earlier_date, b"dated earlier");
        assert_eq!(body_of(&store, &page).unwrap(), "dated later");

        // A Date ahead of the clock counts as the time it arrived: it does not keep its copy
        // the newest for an hour.
        let ahead = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3600));
        keep(
            admitted(&store.policy, &page, &[("date", &ahead)]),
            b"ahead",
        );
        assert_eq!(body_of(&store, &page).unwrap(), "ahead");
        tokio::time::advance(Duration::from_millis(10)).await;
        // Without a Date of its own, a response is dated when it arrived: the newest.
        keep(admitted(&store.policy, &page, &[]), b"undated");
        assert_eq!(body_of(&store, &page).unwrap(), "undated");
    }

    #[tokio::test]
    async fn a_read_that_arrived_before_a_successful_write_is_not_stored() {
        let store = Shared::new(policy(usize::MAX, usize::MAX));
        let read = |path: &str| {
            let mut read = request(path, None);
            read.epoch = store.epoch(&read.key());
            read
        };
        let before = read("/doc");
        store.invalidate(&request("/doc", None).key());
        store.insert(copy(&store.policy, &before, b"before the write"));
        assert_eq!(store.len(), 0);
        // A read that arrives after the write is stored.
        let after = read("/doc");
        store.insert(copy(&store.policy, &after, b"after the write"));
        assert_eq!(body_of(&store, &after).unwrap(), "after the write");
        // And a write drops it, as before.
        store.invalidate(&after.key());
        assert_eq!(store.len(), 0);
        // Clearing the store keeps out what was asked for before it, too.
        let before_clearing = read("/other");
        store.clear();
        store.insert(copy(&store.policy, &before_clearing, b"before clearing"));
        assert_eq!(store.len(), 0);
        let after_clearing = read("/other");
        store.insert(copy(&store.policy, &after_clearing, b"after clearing"));
        assert_eq!(store.len(), 1);
    }

    #[tokio::test]
    async fn copies_being_made_are_charged_to_the_budget_and_given_back() {
        use crate::stale::tee::Tee;

        // Half of this budget, 5,000 bytes, is the most copies being made may hold.
        let store = Arc::new(Shared::new(policy(10_000, usize::MAX)));
        let sized = |len: usize| {
            let len = len.to_string();
            admitted(
                &store.policy,
                &request("/sized", None),
                &[("content-length", &len)],
            )
        };
        // A declared length is charged whole, before its buffer is reserved.
        let held = Tee::new(store.clone(), sized(3_000)).expect("within the share");
        assert_eq!(store.in_progress(), 3_000);
        assert!(
            Tee::new(store.clone(), sized(3_000)).is_none(),
            "past the share"
        );
        assert_eq!(store.in_progress(), 3_000);

        // Without one, each frame is charged as it passes, until the share is spent: the copy is
        // then abandoned, and what it held given back.
        let mut frames = Tee::new(
            store.clone(),
            admitted(&store.policy, &request("/f", None), &[]),
        )
        .expect("nothing to charge yet");
        assert!(frames.copy(&Bytes::from(vec![b'f'; 1_500])));
        let frame_cost = 1_500 + std::mem::size_of::<Bytes>();
        assert_eq!(store.in_progress(), 3_000 + frame_cost);
        assert!(!frames.copy(&Bytes::from(vec![b'f'; 1_000])));
        drop(frames);
        assert_eq!(store.in_progress(), 3_000);

        // A copy that completes moves from the copies being made to the copies held.
        drop(held);
        let mut done = Tee::new(store.clone(), sized(4)).unwrap();
        assert!(done.copy(&Bytes::from_static(b"done")));
        done.complete();
        assert_eq!(store.in_progress(), 0);
        assert_eq!(store.len(), 1);
    }

    #[tokio::test]
    async fn copies_held_give_way_to_copies_being_made_within_the_budget() {
        use crate::stale::tee::Tee;

        let loose = policy(usize::MAX, usize::MAX);
        let one = copy(&loose, &request("/a", None), &[b'a'; 1000]).size;
        let store = Arc::new(Shared::new(policy(one * 3 + one / 2, usize::MAX)));
        let [a, b, c] = ["/a", "/b", "/c"].map(|path| request(path, None));
        for r in [&a, &b, &c] {
            store.insert(copy(&store.policy, r, &[b'x'; 1000]));
        }
        assert_eq!(store.len(), 3);
        let declared = admitted(
            &store.policy,
            &request("/d", None),
            &[("content-length", "1000")],
        );
        let _making = Tee::new(store.clone(), declared).unwrap();
        // The copy being made took the room of the least recently used copy.
        assert_eq!(store.len(), 2);
        assert!(store.bytes() + store.in_progress() <= store.policy.max_bytes);
        assert!(body_of(&store, &a).is_none());
    }
}
