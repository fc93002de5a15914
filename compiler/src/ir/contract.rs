//! Inputs against a plan's tensor contract: every `In` tensor present under its name with the
//! shape its symbolic extents take for the call's [`Sizes`], exactly as many values, all finite,
//! and nothing the plan does not read. Every backend's checked entry calls it.

use super::{Plan, Role, Sizes, SizesError};
use nsac_kernels::io::{InputError, InputRefs, Inputs, input_refs};

/// Why inputs do not fit a plan on some sizes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContractError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Sizes(#[from] SizesError),
}

/// Checks `inputs` against the `In` tensors of `plan` bound by `sizes`.
pub fn check_inputs(plan: &Plan, sizes: &Sizes, inputs: &Inputs) -> Result<(), ContractError> {
    check_input_refs(plan, sizes, &input_refs(inputs))
}

/// [`check_inputs`] for borrowed tensors.
pub fn check_input_refs(
    plan: &Plan,
    sizes: &Sizes,
    inputs: &InputRefs<'_>,
) -> Result<(), ContractError> {
    check_input_refs_except(plan, sizes, inputs, &[])
}

/// [`check_input_refs`] without the `In` tensors named in `skip` (a training plan's forward
/// pass does not read the upstream gradient `do`).
pub fn check_input_refs_except(
    plan: &Plan,
    sizes: &Sizes,
    inputs: &InputRefs<'_>,
    skip: &[&str],
) -> Result<(), ContractError> {
    let expected: Vec<_> = plan
        .tensors_with(Role::In)
        .filter(|&id| !skip.contains(&plan.tensor(id).name.as_str()))
        .collect();
    for &id in &expected {
        let name = &plan.tensor(id).name;
        let want = sizes.shape(plan, id)?;
        let t = inputs
            .get(name.as_str())
            .ok_or_else(|| InputError::Missing(name.clone()))?;
        if t.shape != want.as_slice() {
            return Err(InputError::BadShape {
                name: name.clone(),
                got: t.shape.to_vec(),
                expected: want,
            }
            .into());
        }
        let numel: usize = t.shape.iter().product();
        if t.data.len() != numel {
            return Err(InputError::BadLength {
                name: name.clone(),
                shape: t.shape.to_vec(),
                got: t.data.len(),
                expected: numel,
            }
            .into());
        }
        if t.data.iter().any(|x| !x.is_finite()) {
            return Err(InputError::NonFinite(name.clone()).into());
        }
    }
    for name in inputs.keys() {
        if !expected.iter().any(|&id| plan.tensor(id).name == *name) {
            let names: Vec<&str> = expected
                .iter()
                .map(|&id| plan.tensor(id).name.as_str())
                .collect();
            return Err(InputError::Unexpected(name.to_string(), names.join(", ")).into());
        }
    }
    Ok(())
}
