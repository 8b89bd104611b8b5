//! The state of one upstream ([`Phase`]) and the one word a request reads to learn it: phase,
//! whether a probe is in flight, epoch and consecutive failures, packed so that a success costs
//! one atomic load.

/// The state of one upstream, as spans and events name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Requests go through; failures are counted.
    Closed,
    /// Marked unavailable: requests are refused until the open time is over.
    Open,
    /// The open time is over: one request at a time goes through as a probe.
    HalfOpen,
}

impl Phase {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Phase::Closed => "closed",
            Phase::Open => "open",
            Phase::HalfOpen => "half_open",
        }
    }
}

/// The word a request reads: phase, whether a probe is in flight, epoch, consecutive failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Word(pub(super) u64);

const PHASE_SHIFT: u32 = 62;
const PROBING: u64 = 1 << 61;
const EPOCH_SHIFT: u32 = 32;
const EPOCH_MASK: u64 = (1 << 29) - 1;
const FAILURES_MASK: u64 = u32::MAX as u64;

impl Word {
    pub(super) fn new(phase: Phase, probing: bool, epoch: u32, failures: u32) -> Self {
        let phase = match phase {
            Phase::Closed => 0,
            Phase::Open => 1,
            Phase::HalfOpen => 2,
        };
        Word(
            (phase << PHASE_SHIFT)
                | if probing { PROBING } else { 0 }
                | ((u64::from(epoch) & EPOCH_MASK) << EPOCH_SHIFT)
                | u64::from(failures),
        )
    }

    pub(super) fn phase(self) -> Phase {
        match self.0 >> PHASE_SHIFT {
            0 => Phase::Closed,
            1 => Phase::Open,
            _ => Phase::HalfOpen,
        }
    }

    pub(super) fn probing(self) -> bool {
        self.0 & PROBING != 0
    }

    pub(super) fn epoch(self) -> u32 {
        ((self.0 >> EPOCH_SHIFT) & EPOCH_MASK) as u32
    }

    pub(super) fn next_epoch(self) -> u32 {
        (self.epoch() + 1) & EPOCH_MASK as u32
    }

    pub(super) fn failures(self) -> u32 {
        (self.0 & FAILURES_MASK) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_word_keeps_every_field_apart() {
        for phase in [Phase::Closed, Phase::Open, Phase::HalfOpen] {
            for probing in [false, true] {
                for epoch in [0, 1, EPOCH_MASK as u32] {
                    for failures in [0, 7, u32::MAX] {
                        let word = Word::new(phase, probing, epoch, failures);
                        assert_eq!(word.phase(), phase);
                        assert_eq!(word.probing(), probing);
                        assert_eq!(word.epoch(), epoch);
                        assert_eq!(word.failures(), failures);
                    }
                }
            }
        }
        assert_eq!(
            Word::new(Phase::Open, false, EPOCH_MASK as u32, 0).next_epoch(),
            0
        );
    }
}
