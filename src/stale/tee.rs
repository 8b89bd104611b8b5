//! The copy of a body on its way to the client: made as the frames pass, never holding one
//! back, and kept only when the body ends as the origin said it would.
//!
//! What a copy holds while it is being made is charged to the store's budget (see
//! [`Shared::reserve`]); when the budget for copies being made is spent, the copy is abandoned
//! and the body streams on uncopied. The charge is given back however the copy ends: stored,
//! abandoned, or dropped with a body the client left.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::admission::Admission;
use super::store::Shared;

/// A body being copied for the store. Boxed in the response body only for a response that is
/// being stored.
pub(crate) struct Tee {
    charge: Charge,
    admission: Admission,
    buffer: Buffer,
}

/// The bytes a copy being made holds against the store's budget, given back when dropped.
struct Charge {
    store: Arc<Shared>,
    bytes: usize,
}

impl Charge {
    /// Charges `bytes` more; `false` when the store has no room for them.
    fn grow(&mut self, bytes: usize) -> bool {
        if !self.store.reserve(bytes) {
            return false;
        }
        self.bytes += bytes;
        true
    }

    fn release(&mut self) {
        self.store.release(std::mem::take(&mut self.bytes));
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.release();
    }
}

enum Buffer {
    /// The declared length, reserved once: each frame is copied in as it passes.
    Sized { buffer: BytesMut, declared: usize },
    /// No declared length: the frames are kept (shared, not copied) and joined at the end. The
    /// first is held apart, so a body of one frame needs no list.
    Frames {
        first: Option<Bytes>,
        more: Vec<Bytes>,
        len: usize,
    },
}

impl Tee {
    /// The copy of a body, or `None` when the store has no room for the body it declared.
    pub(crate) fn new(store: Arc<Shared>, admission: Admission) -> Option<Box<Self>> {
        let mut charge = Charge { store, bytes: 0 };
        let buffer = match admission.declared_len {
            // Admitted only within the per-response limit, so the reservation is bounded; it is
            // charged whole before it is made.
            Some(len) => {
                let declared = usize::try_from(len).unwrap_or(usize::MAX);
                if !charge.grow(declared) {
                    return None;
                }
                Buffer::Sized {
                    buffer: BytesMut::with_capacity(declared),
                    declared,
                }
            }
            None => Buffer::Frames {
                first: None,
                more: Vec::new(),
                len: 0,
            },
        };
        Some(Box::new(Tee {
            charge,
            admission,
            buffer,
        }))
    }

    /// A data frame passed; `false` once the body has outgrown the per-response limit (or its
    /// declared length), or the store has no room left for copies being made: the copy is then
    /// to be dropped, and the body streams on uncopied.
    #[must_use]
    pub(crate) fn copy(&mut self, data: &Bytes) -> bool {
        let limit = self.charge.store.policy.max_response_bytes;
        match &mut self.buffer {
            Buffer::Sized { buffer, declared } => {
                // The declared length is within the limit: a body longer than it is a lie.
                if buffer.len() + data.len() > *declared {
                    return false;
                }
                buffer.extend_from_slice(data);
            }
            Buffer::Frames { first, more, len } => {
                // A kept frame costs its place in the list too: a body of many small frames is
                // charged what it holds, not only its data.
                let cost = data.len() + std::mem::size_of::<Bytes>();
                if *len + data.len() > limit || (!data.is_empty() && !self.charge.grow(cost)) {
                    return false;
                }
                *len += data.len();
                if !data.is_empty() {
                    match first {
                        None => *first = Some(data.clone()),
                        Some(_) => more.push(data.clone()),
                    }
                }
            }
        }
        true
    }

    /// The body ended cleanly: the copy goes into the store.
    pub(crate) fn complete(self: Box<Self>) {
        let Tee {
            mut charge,
            admission,
            buffer,
        } = *self;
        let body = match buffer {
            Buffer::Sized { buffer, .. } => buffer.freeze(),
            // One copy, into a buffer of the exact size: the store does not keep the origin's
            // read buffers alive.
            Buffer::Frames { first, more, len } => {
                let mut body = BytesMut::with_capacity(len);
                for frame in first.iter().chain(&more) {
                    body.extend_from_slice(frame);
                }
                body.freeze()
            }
        };
        // The bytes move from the copies being made to the copies held: the insert counts them
        // there.
        charge.release();
        if let Some(copy) = admission.complete(body) {
            charge.store.insert(copy);
        }
    }
}
