//! Kahuna's register: a key holds a value and a revision (the log index of the write that
//! produced it, so a key's revisions strictly increase); 0 means absent. A read returns value
//! and revision; a put returns the new revision; a compare-and-set compares the revision
//! (expected 0 = the key must be absent) and answers the new revision, or the current one when
//! it does not match; a delete answers the revision the key had (none when it was absent) and
//! leaves it absent, and every later write of the key gets a higher revision than the deleted
//! one. Values are u64 ids (workloads write each value once, so a read names the write it
//! saw).
//!
//! A write whose outcome is unknown leaves a revision nobody was told: `Revision::Above(r)`
//! says only that it exceeds `r`, and a later read that sees the value pins it down.

use super::model::Model;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RegisterInput {
    Read,
    Put { value: u64 },
    Cas { expected_revision: u64, value: u64 },
    Delete,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RegisterOutput {
    /// A read's answer: `None` when the key is absent.
    Read(Option<(u64, u64)>),
    /// A put or a matching compare-and-set wrote at this revision.
    Written { revision: u64 },
    /// A compare-and-set found this revision (0: absent) and changed nothing.
    CasMismatch { current: u64 },
    /// A delete's answer: the revision the key had, `None` when it was already absent.
    Deleted { previous: Option<u64> },
    /// No answer (timeout, lost connection): the operation may or may not have taken effect.
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Revision {
    Known(u64),
    /// Some revision greater than this one, not yet observed.
    Above(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RegisterState {
    /// Never written.
    Absent,
    Present {
        value: u64,
        revision: Revision,
    },
    /// Deleted: absent, and every later write's revision exceeds `after` (at least the
    /// deleted revision; a delete's own entry has a higher index still).
    Removed {
        after: u64,
    },
}

impl RegisterState {
    /// The highest revision known to be at or below the current one (0 when absent).
    fn floor(&self) -> u64 {
        match self {
            RegisterState::Absent => 0,
            RegisterState::Removed { after } => *after,
            RegisterState::Present {
                revision: Revision::Known(r) | Revision::Above(r),
                ..
            } => *r,
        }
    }

    fn is_absent(&self) -> bool {
        matches!(self, RegisterState::Absent | RegisterState::Removed { .. })
    }

    /// Whether the current revision can be `revision`; `Some(pinned state)` if so.
    fn with_revision(&self, revision: u64) -> Option<RegisterState> {
        match *self {
            RegisterState::Absent | RegisterState::Removed { .. } => {
                (revision == 0).then_some(*self)
            }
            RegisterState::Present {
                revision: Revision::Known(r),
                ..
            } => (r == revision).then_some(*self),
            RegisterState::Present {
                value,
                revision: Revision::Above(r),
            } => (revision > r).then_some(RegisterState::Present {
                value,
                revision: Revision::Known(revision),
            }),
        }
    }
}

/// The compare-and-set register model of one key.
#[derive(Clone, Copy, Debug, Default)]
pub struct Register;

impl Model for Register {
    type State = RegisterState;
    type Input = RegisterInput;
    type Output = RegisterOutput;

    fn init(&self) -> RegisterState {
        RegisterState::Absent
    }

    fn step(
        &self,
        state: &RegisterState,
        input: &RegisterInput,
        output: &RegisterOutput,
        next: &mut Vec<RegisterState>,
    ) {
        use RegisterOutput as Out;
        let written = |value, revision| RegisterState::Present {
            value,
            revision: Revision::Known(revision),
        };
        match (*input, *output) {
            (RegisterInput::Read, Out::Unknown) => next.push(*state),
            (RegisterInput::Read, Out::Read(None)) if state.is_absent() => next.push(*state),
            (RegisterInput::Read, Out::Read(Some((value, revision)))) => {
                if let RegisterState::Present { value: held, .. } = *state {
                    if held == value {
                        next.extend(state.with_revision(revision));
                    }
                }
            }
            (RegisterInput::Put { value }, Out::Written { revision })
                if revision > state.floor() =>
            {
                next.push(written(value, revision))
            }
            (RegisterInput::Put { value }, Out::Unknown) => {
                next.push(RegisterState::Present {
                    value,
                    revision: Revision::Above(state.floor()),
                });
            }
            (
                RegisterInput::Cas {
                    expected_revision,
                    value,
                },
                Out::Written { revision },
            ) if revision > expected_revision
                && state.with_revision(expected_revision).is_some() =>
            {
                next.push(written(value, revision))
            }
            (
                RegisterInput::Cas {
                    expected_revision, ..
                },
                Out::CasMismatch { current },
            ) if current != expected_revision => next.extend(state.with_revision(current)),
            (
                RegisterInput::Cas {
                    expected_revision,
                    value,
                },
                Out::Unknown,
            ) => {
                // It applied (the revision was the expected one) or it did not; both are
                // possible where the current revision is not known.
                if let Some(matched) = state.with_revision(expected_revision) {
                    next.push(RegisterState::Present {
                        value,
                        revision: Revision::Above(matched.floor()),
                    });
                }
                let could_differ = match *state {
                    RegisterState::Absent | RegisterState::Removed { .. } => expected_revision != 0,
                    RegisterState::Present {
                        revision: Revision::Known(r),
                        ..
                    } => r != expected_revision,
                    RegisterState::Present {
                        revision: Revision::Above(_),
                        ..
                    } => true,
                };
                if could_differ {
                    next.push(*state);
                }
            }
            (RegisterInput::Delete, Out::Deleted { previous: None }) if state.is_absent() => {
                next.push(*state)
            }
            (
                RegisterInput::Delete,
                Out::Deleted {
                    previous: Some(revision),
                },
            ) if revision > 0 && state.with_revision(revision).is_some() => {
                next.push(RegisterState::Removed { after: revision })
            }
            (RegisterInput::Delete, Out::Unknown) => {
                // Not applied, or applied: a present key is then gone (with a revision above
                // what is known of the one it had); an absent key stays as it is.
                next.push(*state);
                if !state.is_absent() {
                    next.push(RegisterState::Removed {
                        after: state.floor(),
                    });
                }
            }
            // Every other pairing (a put answered with a read, ...) is impossible.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(
        state: RegisterState,
        input: RegisterInput,
        output: RegisterOutput,
    ) -> Vec<RegisterState> {
        let mut next = Vec::new();
        Register.step(&state, &input, &output, &mut next);
        next
    }

    #[test]
    fn an_unknown_write_is_pinned_by_the_read_that_sees_it() {
        let after = step(
            RegisterState::Absent,
            RegisterInput::Put { value: 7 },
            RegisterOutput::Unknown,
        );
        assert_eq!(after.len(), 1);
        let read = step(
            after[0],
            RegisterInput::Read,
            RegisterOutput::Read(Some((7, 12))),
        );
        assert_eq!(
            read,
            vec![RegisterState::Present {
                value: 7,
                revision: Revision::Known(12)
            }]
        );
        assert!(step(
            after[0],
            RegisterInput::Read,
            RegisterOutput::Read(Some((8, 12)))
        )
        .is_empty());
    }

    #[test]
    fn a_cas_matches_only_its_expected_revision() {
        let held = RegisterState::Present {
            value: 1,
            revision: Revision::Known(5),
        };
        let cas = |expected_revision| RegisterInput::Cas {
            expected_revision,
            value: 2,
        };
        assert_eq!(
            step(held, cas(5), RegisterOutput::Written { revision: 9 }).len(),
            1
        );
        assert!(step(held, cas(4), RegisterOutput::Written { revision: 9 }).is_empty());
        assert!(step(held, cas(5), RegisterOutput::CasMismatch { current: 5 }).is_empty());
        assert_eq!(
            step(held, cas(4), RegisterOutput::CasMismatch { current: 5 }),
            vec![held]
        );
        // Expected 0 creates an absent key.
        assert_eq!(
            step(
                RegisterState::Absent,
                cas(0),
                RegisterOutput::Written { revision: 3 }
            )
            .len(),
            1
        );
        // Unknown outcome where the revision matches: applied or not.
        assert_eq!(step(held, cas(5), RegisterOutput::Unknown).len(), 1);
        assert_eq!(step(held, cas(4), RegisterOutput::Unknown), vec![held]);
    }

    #[test]
    fn a_delete_empties_the_key_and_later_writes_go_above_it() {
        let held = RegisterState::Present {
            value: 1,
            revision: Revision::Known(5),
        };
        let deleted = RegisterOutput::Deleted { previous: Some(5) };
        let gone = step(held, RegisterInput::Delete, deleted);
        assert_eq!(gone, vec![RegisterState::Removed { after: 5 }]);
        let gone = gone[0];
        // The deleted value must not come back, and the key reads as absent.
        assert!(step(
            gone,
            RegisterInput::Read,
            RegisterOutput::Read(Some((1, 5)))
        )
        .is_empty());
        assert_eq!(
            step(gone, RegisterInput::Read, RegisterOutput::Read(None)),
            vec![gone]
        );
        // A later write cannot reuse or go below the deleted revision.
        let put = RegisterInput::Put { value: 2 };
        assert!(step(gone, put, RegisterOutput::Written { revision: 5 }).is_empty());
        assert_eq!(
            step(gone, put, RegisterOutput::Written { revision: 8 }).len(),
            1
        );
        // Expected revision 0 matches a deleted key.
        let create = RegisterInput::Cas {
            expected_revision: 0,
            value: 3,
        };
        assert_eq!(
            step(gone, create, RegisterOutput::Written { revision: 9 }).len(),
            1
        );
        // A delete must name the revision the key had, and an absent key answers none.
        assert!(step(
            held,
            RegisterInput::Delete,
            RegisterOutput::Deleted { previous: Some(4) }
        )
        .is_empty());
        assert!(step(
            held,
            RegisterInput::Delete,
            RegisterOutput::Deleted { previous: None }
        )
        .is_empty());
        assert_eq!(
            step(
                gone,
                RegisterInput::Delete,
                RegisterOutput::Deleted { previous: None }
            ),
            vec![gone]
        );
        assert!(step(
            RegisterState::Absent,
            RegisterInput::Delete,
            RegisterOutput::Deleted { previous: Some(3) }
        )
        .is_empty());
    }

    #[test]
    fn an_unknown_delete_may_or_may_not_have_applied() {
        let held = RegisterState::Present {
            value: 1,
            revision: Revision::Known(5),
        };
        let after = step(held, RegisterInput::Delete, RegisterOutput::Unknown);
        assert_eq!(after, vec![held, RegisterState::Removed { after: 5 }]);
        assert_eq!(
            step(
                RegisterState::Absent,
                RegisterInput::Delete,
                RegisterOutput::Unknown
            ),
            vec![RegisterState::Absent]
        );
    }
}
