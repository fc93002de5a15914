//! The checks `run` makes on its file paths before any work: outputs that can be written
//! (by the file policy, `nsac_runtime::fs_policy`), and no output that names an input.

use std::path::Path;

use nsac_runtime::fs_policy::same_location;
use nsac_runtime::tensor_io;

use super::error::CliError;

/// `--inputs`, `--save-inputs` and `--output`: each output must be writable (found now, not
/// after the computation), and no two of them may name the same file or directory (after
/// following symlinks and `..`), so that a run never overwrites its own inputs.
pub fn check_run_paths(
    inputs: Option<&Path>,
    save_inputs: Option<&Path>,
    output: Option<&Path>,
) -> Result<(), CliError> {
    let named = [
        ("--inputs", inputs),
        ("--save-inputs", save_inputs),
        ("--output", output),
    ];
    for (i, (flag_a, a)) in named.iter().enumerate() {
        for (flag_b, b) in &named[i + 1..] {
            if let (Some(a), Some(b)) = (a, b)
                && same_location(a, b)
            {
                return Err(CliError::Other(format!(
                    "{flag_b} {} names the same file as {flag_a} {}; nsac never writes over a file it reads or writes in the same run — pick another path",
                    b.display(),
                    a.display()
                )));
            }
        }
    }
    for path in [save_inputs, output].into_iter().flatten() {
        tensor_io::check_output(path)?;
    }
    Ok(())
}
