//! The store's index and recency list: each key's copies, one per variant, and the order they
//! were last used in, in slots that are reused (a copy stored or evicted moves no other).

use std::collections::HashMap;
use std::sync::Arc;

use super::copy::StoredCopy;
use super::policy::MAX_VARIANTS_PER_KEY;
use super::request::Key;

/// No slot: the end of the recency list.
const NIL: usize = usize::MAX;

/// The index and the recency list, in slots that are reused.
pub(crate) struct Lru {
    /// Each key's slots, oldest stored first.
    pub(crate) map: HashMap<Key, Variants>,
    pub(crate) slots: Vec<Slot>,
    free: Vec<usize>,
    /// The most recently used.
    head: usize,
    /// The least recently used.
    pub(crate) tail: usize,
    pub(crate) len: usize,
    pub(crate) bytes: usize,
    /// Counts every store and read.
    clock: u64,
}

/// The slots of one key's variants, oldest stored first, held inline: a key costs its index
/// entry and no allocation of its own.
#[derive(Default)]
pub(crate) struct Variants {
    slots: [usize; MAX_VARIANTS_PER_KEY],
    len: usize,
}

impl Variants {
    /// Adds `slot`; the caller has made room.
    fn push(&mut self, slot: usize) {
        self.slots[self.len] = slot;
        self.len += 1;
    }

    fn remove(&mut self, slot: usize) {
        if let Some(at) = self.iter().position(|&s| s == slot) {
            self.slots.copy_within(at + 1..self.len, at);
            self.len -= 1;
        }
    }
}

impl std::ops::Deref for Variants {
    type Target = [usize];

    fn deref(&self) -> &[usize] {
        &self.slots[..self.len]
    }
}

impl Default for Lru {
    fn default() -> Self {
        Lru {
            map: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            len: 0,
            bytes: 0,
            clock: 0,
        }
    }
}

pub(crate) struct Slot {
    copy: Option<Arc<StoredCopy>>,
    prev: usize,
    next: usize,
    /// When it was last stored or read, on the list's own clock.
    pub(crate) used: u64,
}

impl Lru {
    /// Drops `copy` if it is held; whether it was.
    pub(crate) fn remove_copy(&mut self, copy: &Arc<StoredCopy>) -> bool {
        let slot = self.map.get(&copy.key).and_then(|slots| {
            slots
                .iter()
                .copied()
                .find(|&slot| Arc::ptr_eq(self.copy(slot), copy))
        });
        if let Some(slot) = slot {
            self.remove(slot);
        }
        slot.is_some()
    }

    pub(crate) fn copy(&self, slot: usize) -> &Arc<StoredCopy> {
        self.slots[slot]
            .copy
            .as_ref()
            .expect("a linked slot holds a copy")
    }

    pub(crate) fn push_front(&mut self, copy: Arc<StoredCopy>) {
        self.len += 1;
        self.bytes += copy.size;
        let key = copy.key.clone();
        let slot = Slot {
            copy: Some(copy),
            prev: NIL,
            next: NIL,
            used: 0,
        };
        let index = match self.free.pop() {
            Some(index) => {
                self.slots[index] = slot;
                index
            }
            None => {
                self.slots.push(slot);
                self.slots.len() - 1
            }
        };
        self.map.entry(key).or_default().push(index);
        self.link_front(index);
    }

    pub(crate) fn link_front(&mut self, slot: usize) {
        self.clock += 1;
        self.slots[slot].used = self.clock;
        self.slots[slot].prev = NIL;
        self.slots[slot].next = self.head;
        if self.head != NIL {
            self.slots[self.head].prev = slot;
        }
        self.head = slot;
        if self.tail == NIL {
            self.tail = slot;
        }
    }

    pub(crate) fn unlink(&mut self, slot: usize) {
        let Slot { prev, next, .. } = self.slots[slot];
        match prev {
            NIL => self.head = next,
            prev => self.slots[prev].next = next,
        }
        match next {
            NIL => self.tail = prev,
            next => self.slots[next].prev = prev,
        }
    }

    pub(crate) fn remove(&mut self, slot: usize) {
        self.unlink(slot);
        let copy = self.slots[slot]
            .copy
            .take()
            .expect("a linked slot holds a copy");
        self.free.push(slot);
        self.len -= 1;
        self.bytes -= copy.size;
        if let Some(slots) = self.map.get_mut(&copy.key) {
            slots.remove(slot);
            if slots.is_empty() {
                self.map.remove(&copy.key);
            }
        }
    }
}
