//! Tests of the oracle: hand-computed cases with explicit numbers, edge cases, and properties on
//! random inputs (odd lengths, several seeds).

mod edges;
mod errors;
mod given;
mod hand;
mod kinds;
mod large;
mod layout;
mod library;
mod props;
mod support;
