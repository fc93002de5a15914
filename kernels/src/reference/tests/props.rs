//! Properties on random inputs.
