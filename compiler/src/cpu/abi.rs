//! The one entry signature of every generated driver and its manifest.
//!
//! Every driver is `extern "C" fn(args: *const u64) -> i64`: `args` points at an argument
//! block of 8-byte slots (pointers and `i64` sizes), and the driver returns a count (the top-k
//! driver: how many blocks it chose) or 0. Which slot means what is the driver's [`Entry`],
//! built here from its [`Step`] — the code generator loads exactly `entry.slots.len()` slots in
//! this order, and the executor fills them by name through [`Args`], which refuses a call with
//! a slot left unset. So the two sides of the ABI read one list instead of keeping arities and
//! argument orders in step by hand.

use super::schedule::Step;
use crate::ir::Plan;

/// The native type of every generated driver.
pub type EntryFn = unsafe extern "C" fn(*const u64) -> i64;

/// What one slot of an argument block holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotKind {
    /// A pointer the driver only reads (f32 unless said otherwise).
    Read,
    /// A pointer to i32 the driver only reads.
    ReadI32,
    /// A pointer the driver writes (an output row or packed layout).
    Write,
    /// A pointer to i32 the driver writes.
    WriteI32,
    /// A pointer to scratch the driver reads and writes.
    Scratch,
    /// A signed 64-bit size or position.
    Int,
}

/// One named slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub name: String,
    pub kind: SlotKind,
}

/// The argument block of one driver: its slots in order, and whether its return value means
/// something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub slots: Vec<Slot>,
    /// The driver returns a count (otherwise 0).
    pub returns_count: bool,
}

fn slots(list: &[(&str, SlotKind)]) -> Vec<Slot> {
    list.iter()
        .map(|(name, kind)| Slot {
            name: (*name).to_string(),
            kind: *kind,
        })
        .collect()
}

/// The attention drivers' scratch: S/P tile rows, running maxima and sums, the accumulator.
const ATTEND_SCRATCH: [(&str, SlotKind); 4] = [
    ("s", SlotKind::Scratch),
    ("m", SlotKind::Scratch),
    ("l", SlotKind::Scratch),
    ("acc", SlotKind::Scratch),
];

/// The argument block of `step`'s driver (`plan` names the combine's terms).
pub fn entry(plan: &Plan, step: &Step<'_>) -> Entry {
    use SlotKind::*;
    let mut returns_count = false;
    let list: Vec<Slot> = match step {
        Step::Pool(_) => slots(&[
            ("k", Read),
            ("v", Read),
            ("wk", Read),
            ("wv", Read),
            ("ntok", Int),
            ("kc", Write),
            ("vc", Write),
        ]),
        Step::Compressed { .. } => {
            let mut s = slots(&[("q", Read), ("kc", Read), ("vc", Read), ("nvis", Int)]);
            s.extend(slots(&[ATTEND_SCRATCH[0], ("mc", Scratch)]));
            s.extend(slots(&ATTEND_SCRATCH[1..]));
            s.extend(slots(&[("out", Write)]));
            s
        }
        Step::TopK { .. } => {
            returns_count = true;
            slots(&[
                ("p", Read),
                ("nvis", Int),
                ("t", Int),
                ("len", Int),
                ("scores", Scratch),
                ("idx", WriteI32),
            ])
        }
        Step::Selected { .. } => {
            let mut s = slots(&[
                ("q", Read),
                ("k", Read),
                ("v", Read),
                ("idx", ReadI32),
                ("count", Int),
                ("t", Int),
                ("len", Int),
            ]);
            s.extend(slots(&ATTEND_SCRATCH));
            s.extend(slots(&[("out", Write)]));
            s
        }
        Step::Window { .. } => {
            let mut s = slots(&[
                ("q", Read),
                ("k", Read),
                ("v", Read),
                ("t", Int),
                ("len", Int),
            ]);
            s.extend(slots(&ATTEND_SCRATCH));
            s.extend(slots(&[("out", Write)]));
            s
        }
        Step::CombineGrad(cg) => {
            let mut s = slots(&[("do", Read)]);
            for term in &cg.terms {
                let mut add = |id: crate::ir::TensorId, kind| {
                    s.push(Slot {
                        name: plan.tensor(id).name.clone(),
                        kind,
                    })
                };
                add(term.out, Read);
                if let (Some(g), Some(dg)) = (term.gate, term.d_gate) {
                    add(g, Read);
                    add(dg, Write);
                }
                add(term.d_out, Write);
                add(term.delta, Write);
            }
            s
        }
        Step::GradQ(_) => slots(&[
            ("q", Read),
            ("kt", Read),
            ("kr", Read),
            ("vt", Read),
            ("do", Read),
            ("lse", Read),
            ("delta", Read),
            ("ranges", ReadI32),
            ("nranges", Int),
            ("s", Scratch),
            ("dp", Scratch),
            ("acc", Scratch),
            ("out", Write),
        ]),
        Step::GradKv(_) => slots(&[
            ("q", Read),
            ("kt", Read),
            ("vt", Read),
            ("do", Read),
            ("lse", Read),
            ("delta", Read),
            ("list", ReadI32),
            ("count", Int),
            ("lo", Int),
            ("hi", Int),
            ("s", Scratch),
            ("dp", Scratch),
            ("qpad", Scratch),
            ("dopad", Scratch),
            ("kacc", Scratch),
            ("vacc", Scratch),
            ("dk", Write),
            ("dv", Write),
        ]),
        Step::PoolGrad(_) => slots(&[
            ("k", Read),
            ("v", Read),
            ("wk", Read),
            ("wv", Read),
            ("dkc", Read),
            ("dvc", Read),
            ("ntok", Int),
            ("dk", Write),
            ("dv", Write),
            ("dwk", Write),
            ("dwv", Write),
        ]),
        Step::GradSum(g) => {
            let mut s = slots(&[("out", Write), ("n", Int)]);
            for i in 0..g.parts.len() {
                s.push(Slot {
                    name: format!("part{i}"),
                    kind: Read,
                });
            }
            s
        }
        Step::Combine(c) => {
            let mut s = slots(&[("out", Write)]);
            for term in &c.terms {
                s.push(Slot {
                    name: plan.tensor(term.out).name.clone(),
                    kind: Read,
                });
                if let Some(g) = term.gate {
                    s.push(Slot {
                        name: plan.tensor(g).name.clone(),
                        kind: Read,
                    });
                }
            }
            s
        }
    };
    let mut list = list;
    if step.saves_lse(plan) {
        list.push(Slot {
            name: "lse".into(),
            kind: Write,
        });
    }
    Entry {
        slots: list,
        returns_count,
    }
}

impl Entry {
    /// The position of slot `name`.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.slots.iter().position(|s| s.name == name)
    }

    /// A human-readable signature, e.g. `(q: read, nvis: int, out: write) -> count`.
    pub fn describe(&self) -> String {
        let args: Vec<String> = self
            .slots
            .iter()
            .map(|s| format!("{}: {:?}", s.name, s.kind).to_lowercase())
            .collect();
        let ret = if self.returns_count { " -> count" } else { "" };
        format!("({}){ret}", args.join(", "))
    }
}

/// Why an argument block was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AbiError {
    #[error("driver `{driver}` has no argument `{name}`")]
    NoSlot { driver: String, name: String },
    #[error("argument `{name}` of driver `{driver}` is a {kind:?} slot, not a {given}")]
    WrongKind {
        driver: String,
        name: String,
        kind: SlotKind,
        given: &'static str,
    },
    #[error("argument `{name}` of driver `{driver}` was never set")]
    Unset { driver: String, name: String },
    #[error("the argument block was built for driver `{built_for}`, not `{driver}`")]
    OtherDriver { built_for: String, driver: String },
}

/// A compiled driver with its entry.
#[derive(Debug, Clone)]
pub struct Driver {
    pub name: String,
    pub entry: Entry,
    f: EntryFn,
}

impl Driver {
    /// # Safety
    /// `f` must be the finalized code of a function generated for `entry` (it loads exactly
    /// those slots, in that order).
    pub(super) unsafe fn new(name: String, entry: Entry, f: EntryFn) -> Self {
        Driver { name, entry, f }
    }

    /// An empty argument block for this driver.
    pub fn args(&self) -> Args {
        Args {
            driver: self.name.clone(),
            values: vec![0; self.entry.slots.len()],
            set: vec![false; self.entry.slots.len()],
        }
    }

    /// Calls the driver on `args`, after checking it is this driver's block with every slot set.
    ///
    /// # Safety
    /// Every pointer slot must address memory the driver may read (or write) for the sizes in
    /// the block's integer slots, laid out as the generated code documents (`codegen::branch`):
    /// the executor derives them from tensors checked against the plan. Only the block's
    /// completeness and kinds are checked here.
    pub unsafe fn call(&self, args: &Args) -> Result<i64, AbiError> {
        if args.driver != self.name {
            return Err(AbiError::OtherDriver {
                built_for: args.driver.clone(),
                driver: self.name.clone(),
            });
        }
        if let Some(i) = args.set.iter().position(|s| !s) {
            return Err(AbiError::Unset {
                driver: self.name.clone(),
                name: self.entry.slots[i].name.clone(),
            });
        }
        // SAFETY: the block has exactly the entry's slots, all set with values of their kind;
        // the pointers' validity is the caller's contract above.
        Ok(unsafe { (self.f)(args.values.as_ptr()) })
    }
}

/// A slot of one driver, resolved by name once (kind checked), then set per call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotRef(usize);

impl Driver {
    /// Resolves slot `name`, which must be of one of the kinds in `ok`.
    fn resolve(
        &self,
        name: &str,
        ok: &[SlotKind],
        given: &'static str,
    ) -> Result<SlotRef, AbiError> {
        let i = self.entry.index(name).ok_or_else(|| AbiError::NoSlot {
            driver: self.name.clone(),
            name: name.to_string(),
        })?;
        let kind = self.entry.slots[i].kind;
        if !ok.contains(&kind) {
            return Err(AbiError::WrongKind {
                driver: self.name.clone(),
                name: name.to_string(),
                kind,
                given,
            });
        }
        Ok(SlotRef(i))
    }

    /// A pointer slot the driver reads (f32 or i32).
    pub fn read(&self, name: &str) -> Result<SlotRef, AbiError> {
        self.resolve(name, &[SlotKind::Read, SlotKind::ReadI32], "read pointer")
    }

    /// A pointer slot the driver writes or uses as scratch (f32 or i32).
    pub fn write(&self, name: &str) -> Result<SlotRef, AbiError> {
        self.resolve(
            name,
            &[SlotKind::Write, SlotKind::WriteI32, SlotKind::Scratch],
            "write pointer",
        )
    }

    /// An integer slot.
    pub fn int(&self, name: &str) -> Result<SlotRef, AbiError> {
        self.resolve(name, &[SlotKind::Int], "integer")
    }
}

/// One driver's argument block.
#[derive(Debug, Clone)]
pub struct Args {
    driver: String,
    values: Vec<u64>,
    set: Vec<bool>,
}

impl Args {
    /// Sets a pointer slot (resolved by [`Driver::read`] or [`Driver::write`]).
    pub fn ptr<T>(&mut self, slot: SlotRef, p: *const T) {
        self.put(slot, p as u64);
    }

    /// Sets an integer slot (resolved by [`Driver::int`]).
    pub fn int(&mut self, slot: SlotRef, x: i64) {
        self.put(slot, x as u64);
    }

    /// (A slot of another driver past this block's end is dropped; [`Driver::call`] then
    /// refuses the block as built for another driver or with a slot unset.)
    fn put(&mut self, slot: SlotRef, x: u64) {
        if let (Some(v), Some(s)) = (self.values.get_mut(slot.0), self.set.get_mut(slot.0)) {
            *v = x;
            *s = true;
        }
    }
}
