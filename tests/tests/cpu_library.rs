//! The library specs (built in Rust until the parser lands) agree with the f64 oracle on the
//! CPU backend, under two variants, on odd lengths, several seeds, batched and varlen, and with
//! 1 and 2 threads.

mod cpu_common;

use cpu_common::{check, library, nsa_fla, nsa_paper, two_variants, with_heads};
use nsac_dsl::problem::Problem;

#[test]
fn library_specs_match_the_oracle_batched() {
    for spec in library() {
        // Keep the paper-sized heads/dims small enough for the debug-built oracle.
        let problem = with_heads(Problem::batched(2, 77), 8, 2, 24, 20);
        let shape = problem.resolve(&spec).expect("valid");
        for seed in [1, 2] {
            check(&spec, &shape, seed, &two_variants(), 2);
        }
    }
}

#[test]
fn library_specs_match_the_oracle_varlen() {
    for spec in library() {
        let problem = with_heads(Problem::varlen(vec![0, 5, 70, 131]), 6, 3, 17, 9);
        let shape = problem.resolve(&spec).expect("valid");
        check(&spec, &shape, 7, &two_variants(), 1);
    }
}

#[test]
fn library_specs_match_the_oracle_with_their_own_heads() {
    for spec in library() {
        let shape = Problem::batched(1, 133).resolve(&spec).expect("valid");
        check(&spec, &shape, 3, &two_variants()[..1], 2);
    }
}

#[test]
fn nsa_configs_select_beyond_the_forced_blocks() {
    // Long enough that top-16 of 64-key blocks is a real choice (> 16 candidate blocks).
    for spec in [nsa_fla(), nsa_paper()] {
        let problem = with_heads(Problem::batched(1, 1101), 4, 1, 16, 8);
        let shape = problem.resolve(&spec).expect("valid");
        check(&spec, &shape, 11, &two_variants(), 2);
    }
}
