//! Boxes kept per thread for the next request: what must live out of a moved value (the
//! response future, the body) without a heap allocation per request. A box is allocated only
//! when a thread has more such values alive at once than it has had before.

use std::cell::RefCell;
use std::thread::LocalKey;

/// The most spare boxes a thread keeps of one kind; one given back beyond that is freed.
const MAX_SPARE: usize = 1024;

/// A thread's spare boxes of one kind (`P` is the box: `Box<T>` or `Pin<Box<T>>`).
pub(crate) struct Spare<P>(RefCell<Vec<P>>);

impl<P> Spare<P> {
    pub(crate) const fn new() -> Self {
        Spare(RefCell::new(Vec::new()))
    }
}

/// A box from the thread's spare ones, if it has one.
pub(crate) fn take<P: 'static>(spare: &'static LocalKey<Spare<P>>) -> Option<P> {
    spare
        .try_with(|spare| spare.0.try_borrow_mut().ok()?.pop())
        .ok()
        .flatten()
}

/// Gives a box back, emptied by the caller (a spare box must hold none of an old request's
/// bytes). At the thread's exit, while the list is in use, or beyond [`MAX_SPARE`], it is
/// simply freed.
pub(crate) fn give<P: 'static>(spare: &'static LocalKey<Spare<P>>, boxed: P) {
    let _ = spare.try_with(|spare| {
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

    thread_local! {
        static NUMBERS: Spare<Box<u64>> = const { Spare::new() };
    }

    #[test]
    fn a_box_given_back_is_taken_again_and_the_list_is_bounded() {
        assert!(take(&NUMBERS).is_none());
        let boxed = Box::new(7);
        let address = &*boxed as *const u64;
        give(&NUMBERS, boxed);
        let again = take(&NUMBERS).expect("the box given back");
        assert_eq!(&*again as *const u64, address);
        for n in 0..MAX_SPARE as u64 + 10 {
            give(&NUMBERS, Box::new(n));
        }
        let kept = NUMBERS.with(|spare| spare.0.borrow().len());
        assert_eq!(kept, MAX_SPARE);
    }
}
