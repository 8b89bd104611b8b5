//! The shared table of upstreams, and the state of each: closed, open, half-open.
//!
//! A request that succeeds touches atomics only: it hashes its key, finds its slot (or none), and
//! reads one word; it writes only to reset a count of failures that a success ends. Failures and
//! transitions take the slot's lock.
//!
//! The table is a fixed array of slots, made when the layer is built, in groups of eight. A key
//! lives in the group its hash names, in the first free slot, and is found by its 64-bit hash
//! (keyed per table with a random key, so a client cannot pick two keys that collide). A key gets a slot at its
//! first failure; a slot is given to another key only once it is idle. So the table never grows:
//! when the group of a new key is full of live keys, that key is not tracked and its requests are
//! forwarded.
//!
//! Every change of state bumps the slot's epoch. An outcome is recorded against the epoch its
//! request was admitted under: a request admitted before the upstream was marked unavailable,
//! which fails afterwards, does not extend the open time, and a probe that has been given up
//! cannot close a state that moved on.

mod events;
mod outcome;
mod probe;
mod settings;
mod table;
mod transitions;
mod window;
mod word;

pub(crate) use outcome::{Admission, Cause, Outcome};
pub(crate) use settings::{RatioRule, Settings};
pub(crate) use table::Table;

#[cfg(test)]
mod fixture;
