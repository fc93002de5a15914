//! Lowerings from a `Spec` onto the plan vocabulary: `forward`, and `backward`, which turns a
//! forward plan into the training pair; decode lowerings add their ops and tensors beside them.

mod backward;
mod forward;

pub use backward::{backward, gradient_name};
pub use forward::forward;

use nsac_dsl::spec::SelectionForm;

use super::VerifyError;

/// Why a spec cannot be lowered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LowerError {
    #[error("branch `{branch}`: parameter `{param}` must be positive")]
    ZeroParameter { branch: String, param: &'static str },
    #[error("select branch `{branch}` is scored by `{by}`, which is not a compress branch")]
    BadScoredBy { branch: String, by: String },
    #[error(
        "select branch `{branch}` is within `{within}`, which is not a select branch or forms a cycle"
    )]
    BadWithin { branch: String, within: String },
    #[error("combine names `{0}`, which is not a branch")]
    UnknownCombineBranch(String),
    #[error("branch `{0}` is declared twice or missing from combine")]
    CombineMismatch(String),
    #[error("heads {q}/{kv}: query heads must be a positive multiple of kv heads")]
    BadHeads { q: u32, kv: u32 },
    #[error("head dims must be positive")]
    BadHeadDim,
    /// A selection form beyond NSA's blocks (issue 12): the oracle defines it, the plan and
    /// the backends do not lower it yet.
    #[error(
        "branch `{branch}` uses {}, which the compiled backends do not support yet (the f64 oracle runs it: `--device reference`)",
        form.describe()
    )]
    Unsupported { branch: String, form: SelectionForm },
    /// A selection form the forward computes but no lowering of `pass` defines yet (the
    /// oracle defines these forms for the forward only).
    #[error(
        "branch `{branch}` uses {}, which is defined for the forward pass only, not for {pass} yet",
        form.describe()
    )]
    ForwardOnly {
        branch: String,
        form: SelectionForm,
        pass: &'static str,
    },
    #[error("the lowered plan breaks the IR contract (a compiler bug): {0}")]
    Verify(#[from] VerifyError),
}
