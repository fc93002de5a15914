//! Turning generated functions into machine code (cranelift-jit, host ISA via cranelift-native,
//! `opt_level = speed`), and into deterministic text: CLIF for `--emit clif`, lowered machine
//! instructions for `--emit asm`.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use cranelift_codegen::settings::{self, Configurable};
use cranelift_codegen::{Context, isa};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{Module, default_libcall_names};

use super::CpuError;
use super::codegen::{self, Generated};
use super::variant::CpuVariant;
use crate::ir::Plan;

/// Whether the host has FMA (x86-64: the `fma` feature; aarch64 always).
pub fn host_has_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("fma")
    }
    #[cfg(target_arch = "aarch64")]
    {
        true
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

fn flags() -> Result<settings::Flags, CpuError> {
    let mut fb = settings::builder();
    for (k, v) in [
        ("opt_level", "speed"),
        ("use_colocated_libcalls", "false"),
        ("is_pic", "false"),
    ] {
        fb.set(k, v).map_err(|e| CpuError::Isa(e.to_string()))?;
    }
    Ok(settings::Flags::new(fb))
}

/// A JIT module for the host.
pub fn host_module() -> Result<JITModule, CpuError> {
    let isa = cranelift_native::builder()
        .map_err(|e| CpuError::Isa(e.to_string()))?
        .finish(flags()?)
        .map_err(|e| CpuError::Isa(e.to_string()))?;
    Ok(JITModule::new(JITBuilder::with_isa(
        isa,
        default_libcall_names(),
    )))
}

/// A module for baseline x86-64 System V, used only to build (never run) CLIF text, so that the
/// text is the same on every host.
fn text_module() -> Result<JITModule, CpuError> {
    let isa = isa::lookup_by_name("x86_64-unknown-linux-gnu")
        .map_err(|e| CpuError::Isa(e.to_string()))?
        .finish(flags()?)
        .map_err(|e| CpuError::Isa(e.to_string()))?;
    Ok(JITModule::new(JITBuilder::with_isa(
        isa,
        default_libcall_names(),
    )))
}

/// Defines every generated function in `module`; returns the total and the lowered text of
/// each function when `disasm`.
pub fn define_all(
    module: &mut JITModule,
    funcs: &[Generated],
    disasm: bool,
) -> Result<String, CpuError> {
    let mut ctx = Context::new();
    let mut asm = String::new();
    let mut sizes = Vec::with_capacity(funcs.len());
    for g in funcs {
        ctx.clear();
        ctx.func = g.func.clone();
        ctx.set_disasm(disasm);
        module
            .define_function(g.id, &mut ctx)
            .map_err(|e| CpuError::Codegen(format!("{}: {e:?}", g.name)))?;
        sizes.push(ctx.compiled_code().map_or(0, |c| c.code_info().total_size));
        if disasm {
            let text = ctx
                .compiled_code()
                .and_then(|c| c.vcode.clone())
                .unwrap_or_default();
            let _ = writeln!(asm, "; {}\n{text}", g.name);
        }
    }
    module
        .finalize_definitions()
        .map_err(|e| CpuError::Codegen(e.to_string()))?;
    if std::env::var_os(PERF_MAP_ENV).is_some() {
        write_perf_map(module, funcs, &sizes);
    }
    Ok(asm)
}

/// Set this environment variable to have every JIT-compiled function listed in
/// `/tmp/perf-<pid>.map`, the file Linux `perf report` reads to name JIT code, and its machine
/// code written to `/tmp/nsac-<pid>-<START>-<name>.bin` (for
/// `objdump -D -b binary -mi386:x86-64 --adjust-vma=0xSTART FILE`, to match sampled addresses).
pub const PERF_MAP_ENV: &str = "NSAC_PERF_MAP";

/// Appends `START SIZE name` lines for `funcs` to the perf map of this process and dumps their
/// code. A profiling aid only: failure to write is ignored.
fn write_perf_map(module: &JITModule, funcs: &[Generated], sizes: &[u32]) {
    use std::io::Write as _;
    let path = std::env::temp_dir().join(format!("perf-{}.map", std::process::id()));
    let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    else {
        return;
    };
    for (g, size) in funcs.iter().zip(sizes) {
        let code = module.get_finalized_function(g.id);
        let start = code as usize;
        let _ = writeln!(file, "{start:x} {size:x} {}", g.name);
        // SAFETY: `code` is the start of the finalized function, `size` bytes long.
        let bytes = unsafe { std::slice::from_raw_parts(code, *size as usize) };
        let bin = std::env::temp_dir().join(format!(
            "nsac-{}-{start:x}-{}.bin",
            std::process::id(),
            g.name
        ));
        let _ = std::fs::write(bin, bytes);
    }
}

/// The CLIF of every function of `plan` under `variant`, as built before any ISA-specific
/// legalization, for a fixed target (x86-64 System V with FMA): deterministic and host
/// independent.
pub fn emit_clif(plan: &Plan, variant: &CpuVariant) -> Result<String, CpuError> {
    variant.validate()?;
    let mut module = text_module()?;
    let funcs = codegen::generate(&mut module, plan, &super::steps(plan)?, variant, true)
        .map_err(|e| CpuError::Codegen(e.to_string()))?;
    let mut out = String::new();
    for g in &funcs {
        let _ = writeln!(out, "; {}\n{}", g.name, g.func.display());
    }
    Ok(out)
}

/// A host module with every function of `plan` declared and built (not yet defined).
fn generate_host(
    plan: &Plan,
    variant: &CpuVariant,
) -> Result<(JITModule, Vec<Generated>), CpuError> {
    variant.validate()?;
    let mut module = host_module()?;
    let funcs = codegen::generate(
        &mut module,
        plan,
        &super::steps(plan)?,
        variant,
        host_has_fma(),
    )
    .map_err(|e| CpuError::Codegen(e.to_string()))?;
    Ok((module, funcs))
}

/// The lowered machine instructions of every function, compiled for this host.
pub fn emit_asm(plan: &Plan, variant: &CpuVariant) -> Result<String, CpuError> {
    let (mut module, funcs) = generate_host(plan, variant)?;
    let asm = define_all(&mut module, &funcs, true)?;
    // SAFETY: nothing compiled in this module is referenced after this point.
    unsafe { module.free_memory() };
    Ok(asm)
}

/// Compiles `plan` for the host; returns the module, its functions and the compile time.
pub fn compile_host(
    plan: &Plan,
    variant: &CpuVariant,
) -> Result<(JITModule, Vec<Generated>, Duration), CpuError> {
    let start = Instant::now();
    let (mut module, funcs) = generate_host(plan, variant)?;
    define_all(&mut module, &funcs, false)?;
    Ok((module, funcs, start.elapsed()))
}
