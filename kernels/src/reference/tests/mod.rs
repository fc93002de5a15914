//! Tests of the oracle: hand-computed cases with explicit numbers, edge cases, and properties on
//! random inputs (odd lengths, several seeds).

mod edges;
mod hand;
mod props;
mod support;
