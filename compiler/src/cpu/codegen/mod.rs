//! Building the CLIF functions of one plan: signatures, the shared tile routines, one driver per
//! stage, and their declaration in a `cranelift_module::Module`.

pub mod branch;
pub mod grad;
pub mod tile;

pub use super::emit::{Emit, mem};

use cranelift_codegen::ir::types::{F32, I64};
use cranelift_codegen::ir::{
    AbiParam, FuncRef, Function, InstBuilder, Signature, UserFuncName, Value,
};
use cranelift_codegen::isa::CallConv;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_module::{FuncId, Linkage, Module, ModuleError};

use super::abi;
use super::variant::CpuVariant;
use crate::cpu::schedule::Step;
use crate::ir::Plan;

/// The constants generated code is specialized on.
#[derive(Debug, Clone)]
pub struct Consts {
    pub g: usize,
    pub h: usize,
    pub dqk: usize,
    pub dv: usize,
    /// Dv rounded up to a multiple of 4.
    pub dvp: usize,
    pub scale: f32,
    pub causal: bool,
    pub variant: CpuVariant,
    /// Floats per S/P scratch row ([`super::score_stride`]).
    pub s_stride: usize,
    /// Dqk rounded up to a multiple of 4.
    pub dqkp: usize,
    /// Floats per S/P and dP/dS scratch row of the backward drivers ([`super::grad_stride`]).
    pub g_stride: usize,
}

impl Consts {
    pub fn new(plan: &Plan, variant: &CpuVariant) -> Self {
        let d = &plan.consts;
        Consts {
            g: d.group,
            h: d.heads_kv,
            dqk: d.dqk,
            dv: d.dv,
            dvp: d.dv.div_ceil(4) * 4,
            scale: d.scale as f32,
            causal: d.causal,
            variant: *variant,
            s_stride: super::score_stride(plan, variant),
            dqkp: d.dqk.div_ceil(4) * 4,
            g_stride: super::grad_stride(plan, variant),
        }
    }
}

/// What a generated function is, to the code that calls it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Qk,
    Softmax,
    Pv,
    Finish,
    /// The backward's tile routines (`grad.rs`).
    BQk,
    BDp,
    BSoft,
    BPv,
    BAcc,
    /// The driver of `plan.stages[i]`.
    Stage(usize),
    /// The FMA ceiling probe.
    Peak,
}

/// One declared function with its CLIF body.
pub struct Generated {
    pub name: String,
    pub role: Role,
    pub id: FuncId,
    pub func: Function,
}

fn signature(
    call_conv: CallConv,
    params: usize,
    ret: Option<cranelift_codegen::ir::Type>,
) -> Signature {
    let mut sig = Signature::new(call_conv);
    sig.params.extend((0..params).map(|_| AbiParam::new(I64)));
    if let Some(r) = ret {
        sig.returns.push(AbiParam::new(r));
    }
    sig
}

/// Builds one function: `body` gets the parameters and the callee refs, returns the results.
fn build<M: Module>(
    module: &mut M,
    id: FuncId,
    sig: &Signature,
    callees: &[FuncId],
    fma: bool,
    body: impl FnOnce(&mut Emit, &[Value], &[FuncRef]) -> Vec<Value>,
) -> Function {
    let frontend = module.isa().frontend_config();
    let mut func = Function::with_name_signature(UserFuncName::user(0, id.as_u32()), sig.clone());
    let refs: Vec<FuncRef> = callees
        .iter()
        .map(|c| module.declare_func_in_func(*c, &mut func))
        .collect();
    let mut fbc = FunctionBuilderContext::new();
    {
        let b = FunctionBuilder::new(&mut func, &mut fbc);
        let mut e = Emit::new(b, fma);
        let entry = e.b.create_block();
        e.b.append_block_params_for_function_params(entry);
        e.b.switch_to_block(entry);
        e.b.seal_block(entry);
        let params = e.b.block_params(entry).to_vec();
        let rets = body(&mut e, &params, &refs);
        e.b.ins().return_(&rets);
        e.b.finalize(frontend);
    }
    func
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Declares and builds every function of `plan` in `module`, in a deterministic order: the four
/// tile routines, then one driver per stage.
pub fn generate<M: Module>(
    module: &mut M,
    plan: &Plan,
    steps: &[Step<'_>],
    variant: &CpuVariant,
    fma: bool,
) -> Result<Vec<Generated>, Box<ModuleError>> {
    let c = Consts::new(plan, variant);
    let cc = module.isa().default_call_conv();
    let prefix = format!("nsac_{}", sanitize(&plan.name));
    let mut out = Vec::new();
    let declare = |module: &mut M, name: String, sig: &Signature| {
        module
            .declare_function(&name, Linkage::Local, sig)
            .map(|id| (name, id))
            .map_err(Box::new)
    };
    let tile_sigs = [
        (Role::Qk, "qk", 4 + tile::POINTER_ALIASES - 1),
        (Role::Softmax, "softmax", 7),
        (Role::Pv, "pv", 4 + tile::POINTER_ALIASES - 1),
        (Role::Finish, "finish", 3),
    ];
    let mut tile_ids = Vec::new();
    for (role, name, n) in tile_sigs {
        let sig = signature(cc, n, None);
        let (name, id) = declare(module, format!("{prefix}_{name}"), &sig)?;
        let func = build(module, id, &sig, &[], fma, |e, p, _| {
            match role {
                Role::Qk => tile::qk(e, &c, p),
                Role::Softmax => tile::softmax(e, &c, p),
                Role::Pv => tile::pv(e, &c, p),
                _ => tile::finish(e, &c, p),
            }
            vec![]
        });
        tile_ids.push(id);
        out.push(Generated {
            name,
            role,
            id,
            func,
        });
    }
    // A plan with a backward pass: its tile routines, callees 4.. of the backward drivers.
    let mut grad_ids = tile_ids.clone();
    if steps.iter().any(|s| s.is_backward()) {
        let grad_sigs = [
            (Role::BQk, "bqk", 4 + tile::POINTER_ALIASES - 1),
            (Role::BDp, "bdp", 4 + tile::POINTER_ALIASES - 1),
            (Role::BSoft, "bsoft", 7),
            (Role::BPv, "bpv", 4 + tile::POINTER_ALIASES - 1),
            (Role::BAcc, "bacc", 7),
        ];
        for (role, name, n) in grad_sigs {
            let sig = signature(cc, n, None);
            let (name, id) = declare(module, format!("{prefix}_{name}"), &sig)?;
            let func = build(module, id, &sig, &[], fma, |e, p, _| {
                match role {
                    Role::BQk => tile::qk(e, &grad::qk_consts(&c), p),
                    Role::BDp => tile::qk(e, &grad::dp_consts(&c), p),
                    Role::BSoft => grad::soft(e, &c, p),
                    Role::BPv => tile::pv(e, &grad::pv_consts(&c), p),
                    _ => grad::acc(e, &c, p),
                }
                vec![]
            });
            grad_ids.push(id);
            out.push(Generated {
                name,
                role,
                id,
                func,
            });
        }
    }
    for (i, step) in steps.iter().enumerate() {
        let branch = sanitize(step.branch().unwrap_or_default());
        let name = match step {
            Step::Pool(_) => format!("pool_{branch}"),
            Step::Compressed { .. } => format!("cmp_{branch}"),
            Step::TopK { .. } => format!("topk_{branch}"),
            Step::Selected { .. } => format!("sel_{branch}"),
            Step::Window { .. } => format!("win_{branch}"),
            Step::Combine(_) => "combine".to_string(),
            Step::CombineGrad(_) => "dcombine".to_string(),
            Step::GradQ(_) => format!("dq_{branch}"),
            Step::GradKv(_) => format!("dkv_{branch}"),
            Step::PoolGrad(_) => format!("dpool_{branch}"),
            Step::GradSum(g) => format!("gsum_{}", sanitize(&plan.tensor(g.out).name)),
        };
        // Every driver: `(args) -> i64`, the argument block described by its entry.
        let slots = abi::entry(plan, step).slots.len();
        let sig = signature(cc, 1, Some(I64));
        let (name, id) = declare(module, format!("{prefix}_{name}"), &sig)?;
        let callees = if step.is_backward() {
            &grad_ids
        } else {
            &tile_ids
        };
        let lse = step.saves_lse(plan);
        let func = build(module, id, &sig, callees, fma, |e, block, f| {
            let p: Vec<Value> = (0..slots)
                .map(|j| e.b.ins().load(I64, mem(), block[0], (j * 8) as i32))
                .collect();
            let p = p.as_slice();
            let lse = lse.then(|| p[slots - 1]);
            let count = match step {
                Step::Pool(s) => {
                    branch::pool(e, &c, p, s);
                    None
                }
                Step::Compressed { scored, .. } => {
                    branch::compressed(e, &c, f, p, *scored, lse);
                    None
                }
                Step::TopK { params, .. } => Some(branch::topk(e, &c, p, params)),
                Step::Selected { block, .. } => {
                    branch::selected(e, &c, f, p, *block, lse);
                    None
                }
                Step::Window { size, .. } => {
                    branch::window(e, &c, f, p, *size, lse);
                    None
                }
                Step::Combine(s) => {
                    branch::combine(
                        e,
                        &c,
                        p,
                        s.terms.len(),
                        s.terms.iter().any(|t| t.gate.is_some()),
                    );
                    None
                }
                Step::CombineGrad(cg) => {
                    let gated = cg.terms.iter().any(|t| t.gate.is_some());
                    grad::combine_grad(e, &c, p, cg.terms.len(), gated);
                    None
                }
                Step::GradQ(_) => {
                    grad::grad_q(e, &c, f, p);
                    None
                }
                Step::GradKv(_) => {
                    grad::grad_kv(e, &c, f, p);
                    None
                }
                Step::PoolGrad(pg) => {
                    grad::pool_grad(e, &c, p, pg);
                    None
                }
                Step::GradSum(g) => {
                    grad::grad_sum(e, p, g.parts.len());
                    None
                }
            };
            vec![count.unwrap_or_else(|| e.int(0))]
        });
        out.push(Generated {
            name,
            role: Role::Stage(i),
            id,
            func,
        });
    }
    Ok(out)
}

/// Declares and builds the FMA-ceiling probe `fma_peak(iters) -> f32`.
pub fn generate_peak<M: Module>(module: &mut M, fma: bool) -> Result<Generated, Box<ModuleError>> {
    let cc = module.isa().default_call_conv();
    let sig = signature(cc, 1, Some(F32));
    let name = "nsac_fma_peak".to_string();
    let id = module
        .declare_function(&name, Linkage::Local, &sig)
        .map_err(Box::new)?;
    let func = build(module, id, &sig, &[], fma, |e, p, _| {
        vec![branch::fma_peak(e, p)]
    });
    Ok(Generated {
        name,
        role: Role::Peak,
        id,
        func,
    })
}
