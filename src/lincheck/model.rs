//! The sequential specification a history is checked against.

use std::fmt::Debug;
use std::hash::Hash;

/// A sequential object. `step` may allow several next states (an operation whose outcome is
/// unknown may or may not have changed the object); it allows none when `output` cannot be
/// the answer of `input` in `state`.
pub trait Model {
    type State: Clone + Eq + Hash + Debug;
    type Input: Debug;
    type Output: Debug;

    fn init(&self) -> Self::State;

    /// Pushes every state the object may be in after `input` answered `output` in `state`
    /// onto `next` (which the caller has emptied).
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: &Self::Output,
        next: &mut Vec<Self::State>,
    );
}
