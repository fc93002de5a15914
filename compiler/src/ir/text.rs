//! The stable text form of a plan (`nsac compile --emit plan`): a header with the compiled-in
//! constants, every tensor (id, name, role, element type, symbolic shape), then every op with
//! its parameters and operands. Deterministic: no addresses, no sizes of a particular call.

use std::fmt::Write as _;

use super::Plan;
use super::op::{CombineMode, KeySet, Op, ScoreSource, Tie};
use super::tensor::TensorId;

fn shape(plan: &Plan, id: TensorId) -> String {
    let t = plan.tensor(id);
    let dims: Vec<String> = t.shape.iter().map(|e| e.to_string()).collect();
    format!("[{}]", dims.join(", "))
}

fn name(plan: &Plan, id: TensorId) -> String {
    format!("{id} {}", plan.tensor(id).name)
}

pub(super) fn render(plan: &Plan) -> String {
    let c = &plan.consts;
    let mut s = String::new();
    let _ = writeln!(s, "plan {} {{", plan.name);
    let _ = writeln!(
        s,
        "  consts HQ = {}, H = {} (G = {}), DQK = {}, DV = {}, scale = {:e}, {}, dtype {}",
        c.heads_q,
        c.heads_kv,
        c.group,
        c.dqk,
        c.dv,
        c.scale,
        if c.causal { "causal" } else { "non-causal" },
        c.dtype.name()
    );
    let _ = writeln!(s, "  tensors");
    let width = plan.tensors.iter().map(|t| t.name.len()).max().unwrap_or(0);
    for (i, t) in plan.tensors.iter().enumerate() {
        let _ = writeln!(
            s,
            "    {:<4} {:<width$} {:<7} {:<4} {}",
            TensorId(i).to_string(),
            t.name,
            t.role.name(),
            t.elem.name(),
            shape(plan, TensorId(i)),
        );
    }
    let _ = writeln!(s, "  ops");
    for (i, op) in plan.ops.iter().enumerate() {
        let _ = writeln!(s, "    {i}: {}", op_text(plan, op));
    }
    s.push_str("}\n");
    s
}

fn keys_text(plan: &Plan, keys: &KeySet) -> String {
    match keys {
        KeySet::Causal => "causal".to_string(),
        KeySet::Compressed { block, stride } => {
            format!("compressed(block={block}, stride={stride})")
        }
        KeySet::Window { size } => format!("window(size={size})"),
        KeySet::Gather { idx, granularity } => {
            format!("gather({}, granularity={granularity})", name(plan, *idx))
        }
    }
}

fn list(plan: &Plan, ids: &[TensorId]) -> String {
    ids.iter()
        .map(|id| name(plan, *id))
        .collect::<Vec<_>>()
        .join(", ")
}

fn op_text(plan: &Plan, op: &Op) -> String {
    let n = |id: TensorId| name(plan, id);
    match op {
        Op::CombineGrad(cg) => {
            let mode = match cg.mode {
                CombineMode::Gate => "gate",
                CombineMode::Sum => "sum",
            };
            let terms: Vec<String> = cg
                .terms
                .iter()
                .map(|t| {
                    let reads = std::iter::once(t.out).chain(t.gate).collect::<Vec<_>>();
                    let writes = t
                        .d_gate
                        .into_iter()
                        .chain([t.d_out, t.delta])
                        .collect::<Vec<_>>();
                    format!(
                        "{}: ({}) -> ({})",
                        t.branch,
                        list(plan, &reads),
                        list(plan, &writes)
                    )
                })
                .collect();
            format!(
                "combine_grad {mode} (do {}) [{}]",
                n(cg.d_out),
                terms.join("; ")
            )
        }
        Op::AttendGrad(a) => format!(
            "attend_grad {} {} (q {}, k {}, v {}, lse {}, do {}, delta {}) -> (dq {}, dk {}, dv {})",
            a.branch,
            keys_text(plan, &a.keys),
            n(a.q),
            n(a.k),
            n(a.v),
            n(a.lse),
            n(a.d_out),
            n(a.delta),
            n(a.dq),
            n(a.dk),
            n(a.dv)
        ),
        Op::PoolGrad(p) => {
            let mut w = String::new();
            for id in &p.weights {
                let _ = write!(w, ", {}", n(*id));
            }
            let mut dw = String::new();
            for id in &p.d_weights {
                let _ = write!(dw, ", {}", n(*id));
            }
            format!(
                "pool_grad {} {} block={} stride={} ({}, {}{w}, {}, {}) -> ({}, {}{dw})",
                p.branch,
                p.kind.name(),
                p.block,
                p.stride,
                n(p.k),
                n(p.v),
                n(p.d_kc),
                n(p.d_vc),
                n(p.dk),
                n(p.dv)
            )
        }
        Op::GradSum(g) => format!("grad_sum ({}) -> ({})", list(plan, &g.parts), n(g.out)),
        Op::Pool(p) => {
            let mut w = String::new();
            for id in &p.weights {
                let _ = write!(w, ", {}", n(*id));
            }
            format!(
                "pool {} {} block={} stride={} ({}, {}{w}) -> ({}, {})",
                p.branch,
                p.kind.name(),
                p.block,
                p.stride,
                n(p.k),
                n(p.v),
                n(p.kc),
                n(p.vc)
            )
        }
        Op::Attend(a) => {
            let keys = keys_text(plan, &a.keys);
            let lse = a.lse.map(|l| format!(", lse {}", n(l))).unwrap_or_default();
            format!(
                "attend {} {keys} (q {}, k {}, v {}) -> ({}{lse})",
                a.branch,
                n(a.q),
                n(a.k),
                n(a.v),
                n(a.out)
            )
        }
        Op::Score(sc) => {
            let src = match &sc.source {
                ScoreSource::Compressed {
                    branch,
                    block,
                    stride,
                    q,
                    kc,
                    lse,
                } => format!(
                    "probabilities of {branch} (block={block}, stride={stride}; q {}, kc {}, lse {})",
                    n(*q),
                    n(*kc),
                    n(*lse)
                ),
            };
            format!(
                "score {} blocks of {} by {src} -> ({})",
                sc.branch,
                sc.granularity,
                n(sc.out)
            )
        }
        Op::TopK(t) => {
            let tie = match t.tie {
                Tie::LowerIndex => "lower-index",
            };
            format!(
                "topk {} k={} of blocks of {} forced(first={}, last={}) ties={tie} ({}) -> ({})",
                t.branch,
                t.k,
                t.block,
                t.forced.first,
                t.forced.last,
                match t.within {
                    Some(w) => format!(
                        "{}, within {} of blocks of {}",
                        n(t.scores),
                        n(w.idx),
                        w.block
                    ),
                    None => n(t.scores),
                },
                n(t.idx)
            )
        }
        Op::Combine(cb) => {
            let terms: Vec<String> = cb
                .terms
                .iter()
                .map(|term| match term.gate {
                    Some(g) => format!("{} * {}", n(g), n(term.out)),
                    None => n(term.out),
                })
                .collect();
            let mode = match cb.mode {
                CombineMode::Gate => "gate",
                CombineMode::Sum => "sum",
            };
            format!("combine {mode} ({}) -> ({})", terms.join(" + "), n(cb.out))
        }
    }
}
