//! Boxes kept per thread for the next request: what must live out of a moved value (the
//! response future, the body, the request's rare parts) without a heap allocation per request. A box is allocated only
//! when a thread has more such values alive at once than it has had before.

use std::cell::RefCell;
use std::ops::Deref;
use std::pin::Pin;
use std::thread::LocalKey;

/// The most spare boxes a thread keeps of one kind; one given back beyond that is freed.
const MAX_SPARE: usize = 1024;

/// A thread's spare boxes of one kind.
pub(crate) struct Spare<T>(RefCell<Vec<Pin<Box<T>>>>);

impl<T> Spare<T> {
    pub(crate) const fn new() -> Self {
        Spare(RefCell::new(Vec::new()))
    }
}

/// A value that lives in a box its thread uses again: what must stay out of a value that is
/// moved (the response future, the body, the request's facts), without a heap allocation per
/// request.
pub(crate) trait Recycle: Sized + 'static {
    /// The thread's spare boxes of this kind.
    fn spare() -> &'static LocalKey<Spare<Self>>;

    /// Lets go of what the value holds of its request (its bytes, its timer in the runtime's
    /// wheel) before its box is kept: written field by field, not a whole value built and
    /// copied in.
    fn empty(self: Pin<&mut Self>);
}

/// A `T` in a box from its thread's spare ones, given back emptied when this is dropped.
pub(crate) struct Recycled<T: Recycle>(Option<Pin<Box<T>>>);

impl<T: Recycle> Recycled<T> {
    /// `value` in a spare box, or in a new one when the thread has none.
    #[inline(always)]
    pub(crate) fn new(value: T) -> Self {
        let boxed = match take::<T>() {
            Some(mut boxed) => {
                boxed.set(value);
                boxed
            }
            None => Box::pin(value),
        };
        Recycled(Some(boxed))
    }

    /// The value, pinned where it lies.
    #[inline]
    pub(crate) fn as_mut(&mut self) -> Pin<&mut T> {
        match self.0.as_mut() {
            Some(boxed) => boxed.as_mut(),
            None => unreachable!("a box is given back only when it is dropped"),
        }
    }

    /// Where the value lies (for tests that check a box is used again).
    #[cfg(test)]
    pub(crate) fn address(&self) -> *const T {
        &**self as *const T
    }
}

impl<T: Recycle> Deref for Recycled<T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        match self.0.as_deref() {
            Some(value) => value,
            None => unreachable!("a box is given back only when it is dropped"),
        }
    }
}

impl<T: Recycle> Drop for Recycled<T> {
    fn drop(&mut self) {
        let Some(mut boxed) = self.0.take() else {
            return;
        };
        // What the value holds of its request goes now, as it would with the box.
        boxed.as_mut().empty();
        give(boxed);
    }
}

/// A box from the thread's spare ones, if it has one.
fn take<T: Recycle>() -> Option<Pin<Box<T>>> {
    T::spare()
        .try_with(|spare| spare.0.try_borrow_mut().ok()?.pop())
        .ok()
        .flatten()
}

/// Gives a box back, emptied. At the thread's exit, while the list is in use, or beyond
/// [`MAX_SPARE`], it is simply freed.
fn give<T: Recycle>(boxed: Pin<Box<T>>) {
    let _ = T::spare().try_with(|spare| {
        if let Ok(mut spare) = spare.0.try_borrow_mut() {
            if spare.len() < MAX_SPARE {
                spare.push(boxed);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Number(u64);

    impl Recycle for Number {
        fn spare() -> &'static LocalKey<Spare<Self>> {
            thread_local! {
                static SPARE: Spare<Number> = const { Spare::new() };
            }
            &SPARE
        }

        fn empty(mut self: Pin<&mut Self>) {
            self.0 = 0;
        }
    }

    fn kept() -> usize {
        Number::spare().with(|spare| spare.0.borrow().len())
    }

    #[test]
    fn a_box_given_back_is_emptied_taken_again_and_the_list_is_bounded() {
        let first = Recycled::new(Number(7));
        let address = first.address();
        drop(first);
        assert_eq!(kept(), 1);
        Number::spare().with(|spare| assert_eq!(spare.0.borrow()[0].0, 0, "emptied"));

        let again = Recycled::new(Number(8));
        assert_eq!(again.address(), address);
        assert_eq!((*again).0, 8);
        assert_eq!(kept(), 0);

        let many: Vec<_> = (0..MAX_SPARE as u64 + 10)
            .map(|n| Recycled::new(Number(n)))
            .collect();
        drop(many);
        assert_eq!(kept(), MAX_SPARE);
        drop(again);
        assert_eq!(kept(), MAX_SPARE, "one beyond the bound is freed");
    }
}
