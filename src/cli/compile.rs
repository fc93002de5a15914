//! `nsac compile`: show or save the code nsac generates for a spec on a problem — PTX with its
//! launch manifest for GPUs, Cranelift IR or machine code for the CPU.

use std::path::{Path, PathBuf};

use nsac_compiler::ir::Plan;
use nsac_compiler::ptx::{self, Arch};
use nsac_runtime::cpu;

use super::args::{CompileArgs, Emit, Target};
use super::device::{explicit_gpu_variant, explicit_variant};
use super::error::CliError;
use nsac_runtime::fs_policy;

use super::fmt::write_atomically;
use super::output::emit;
use super::problem::problem_from_args;

pub fn run(args: &CompileArgs) -> Result<(), CliError> {
    // `None`: the Plan, which needs no target.
    let target = match (args.target, args.emit) {
        (_, Some(Emit::Plan)) => None,
        (Some(t), _) => Some(t),
        (None, Some(Emit::Clif | Emit::Asm)) => Some(Target::Cpu),
        (None, Some(Emit::Ptx)) => Some(Target::Ptx),
        (None, None) => {
            return Err(CliError::Other(
                "say what to compile for: --target cpu|ptx, or --emit plan|clif|asm|ptx".into(),
            ));
        }
    };
    if let Some(path) = &args.output {
        // Found before any code is generated; the manifest goes beside the PTX.
        fs_policy::check_writable(path)?;
        if target == Some(Target::Ptx) {
            fs_policy::check_writable(&manifest_path(path))?;
        }
    }
    let spec = nsac_dsl::load(&args.spec)?;
    let shape = problem_from_args(&args.problem)?.resolve(&spec)?;
    let Some(target) = target else {
        let plan = if args.backward {
            Plan::backward(&spec, &nsac_compiler::ir::Signature::of(&shape))?
        } else {
            Plan::for_shape(&spec, &shape)?
        };
        return write_text(args.output.as_deref(), &plan.text());
    };
    if args.backward {
        return Err(CliError::Other(
            "--backward applies to --emit plan only for now".into(),
        ));
    }
    match target {
        Target::Cpu => {
            let variant = explicit_variant(args.variant.as_deref())?.unwrap_or_default();
            let text = match args.emit.unwrap_or(Emit::Clif) {
                Emit::Clif => cpu::emit_clif(&spec, &shape, &variant)?,
                Emit::Asm => cpu::emit_asm(&spec, &shape, &variant)?,
                // (`--emit plan` returned above.)
                Emit::Ptx | Emit::Plan => {
                    return Err(CliError::Other("`--emit ptx` needs --target ptx".into()));
                }
            };
            write_text(args.output.as_deref(), &text)?;
        }
        Target::Ptx => {
            if let Some(e) = args.emit.filter(|e| *e != Emit::Ptx) {
                return Err(CliError::Other(format!(
                    "--target ptx emits PTX; `--emit {}` is for --target cpu",
                    e.name()
                )));
            }
            let arch = Arch::parse(&args.arch).ok_or_else(|| {
                CliError::Other(format!(
                    "unknown --arch `{}` (expected sm_80 or sm_90)",
                    args.arch
                ))
            })?;
            let variant = explicit_gpu_variant(args.variant.as_deref())?.unwrap_or_default();
            let (text, manifest) = ptx::emit_ptx(&spec, &shape, &variant, arch)?;
            match &args.output {
                Some(path) => {
                    let manifest_path = manifest_path(path);
                    // Both written before either is renamed into place: never a new PTX with
                    // an old manifest.
                    let staged = vec![
                        fs_policy::stage(path, text.as_bytes())?,
                        fs_policy::stage(&manifest_path, manifest.to_json().as_bytes())?,
                    ];
                    fs_policy::commit_all(staged)?;
                    eprintln!("wrote {} and {}", path.display(), manifest_path.display());
                }
                None => emit(&text).map_err(CliError::Stdout)?,
            }
        }
    }
    Ok(())
}

/// Writes `text` to `path` (atomically), or to standard output.
fn write_text(path: Option<&Path>, text: &str) -> Result<(), CliError> {
    match path {
        Some(path) => write_atomically(path, text),
        None => emit(text).map_err(CliError::Stdout),
    }
}

/// `out.ptx` → `out.manifest.json`.
fn manifest_path(ptx: &Path) -> PathBuf {
    ptx.with_extension("manifest.json")
}
