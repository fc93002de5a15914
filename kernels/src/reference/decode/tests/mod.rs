//! Tests of the decode oracle: decode == forward rows (exactly, see [`harness`]) for every
//! library spec and random specs, the edge cases of the issue (contexts shorter than every
//! block, stride < block, an empty cache, ragged batches, `kv = own`, GQA), incremental pooling
//! counted, and the typed errors.

mod edges;
mod errors;
mod harness;
mod pooling;
mod rows;
