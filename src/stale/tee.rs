//! The copy of a body on its way to the client: made as the frames pass, never holding one
//! back, and kept only when the body ends as the origin said it would.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::copy::Admission;
use super::store::Store;

/// A body being copied for the store. Boxed in the response body only for a response that is
/// being stored.
pub(crate) struct Tee {
    store: Arc<Store>,
    admission: Admission,
    buffer: Buffer,
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
    pub(crate) fn new(store: Arc<Store>, admission: Admission) -> Box<Self> {
        let buffer = match admission.declared_len {
            // Admitted only within the per-response limit, so the reservation is bounded.
            Some(len) => {
                let declared = usize::try_from(len).unwrap_or(usize::MAX);
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
        Box::new(Tee {
            store,
            admission,
            buffer,
        })
    }

    /// A data frame passed; `false` once the body has outgrown the per-response limit (or its
    /// declared length): the copy is then to be dropped, and the body streams on uncopied.
    #[must_use]
    pub(crate) fn copy(&mut self, data: &Bytes) -> bool {
        let limit = self.store.policy.max_response_bytes;
        match &mut self.buffer {
            Buffer::Sized { buffer, declared } => {
                // The declared length is within the limit: a body longer than it is a lie.
                if buffer.len() + data.len() > *declared {
                    return false;
                }
                buffer.extend_from_slice(data);
            }
            Buffer::Frames { first, more, len } => {
                if *len + data.len() > limit {
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
            store,
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
        if let Some(copy) = admission.complete(body) {
            store.insert(copy);
        }
    }
}
