//! Tests of the oracle: hand-computed cases with explicit numbers, edge cases, and properties on
//! random inputs (odd lengths, several seeds).

mod backward;
mod beyond;
mod edges;
mod errors;
mod given;
mod grad_check;
mod hand;
mod kinds;
mod large;
mod layout;
pub(super) mod library;
mod props;
pub(super) mod support;
