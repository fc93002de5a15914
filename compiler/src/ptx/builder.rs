//! A small PTX builder: typed virtual registers, predicates, labels and instructions held as
//! values, printed deterministically (stable register numbering, no addresses or timestamps).
//!
//! The kernel generators in `ptx::kernels` speak only to this module; it knows nothing about
//! attention. Register classes follow the usual PTX naming (`%p`, `%rs`, `%r`, `%rd`, `%f`).

use std::fmt::{self, Write as _};

/// A register class: which `.reg` declaration a register belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RegClass {
    /// `.pred`
    Pred,
    /// `.b16` (bf16 / f16 bit patterns)
    B16,
    /// `.b32` (s32 / u32)
    B32,
    /// `.b64` (addresses)
    B64,
    /// `.f32`
    F32,
}

impl RegClass {
    const ALL: [RegClass; 5] = [
        RegClass::Pred,
        RegClass::B16,
        RegClass::B32,
        RegClass::B64,
        RegClass::F32,
    ];

    fn prefix(self) -> &'static str {
        match self {
            RegClass::Pred => "p",
            RegClass::B16 => "rs",
            RegClass::B32 => "r",
            RegClass::B64 => "rd",
            RegClass::F32 => "f",
        }
    }

    fn decl(self) -> &'static str {
        match self {
            RegClass::Pred => ".pred",
            RegClass::B16 => ".b16",
            RegClass::B32 => ".b32",
            RegClass::B64 => ".b64",
            RegClass::F32 => ".f32",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A virtual register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Reg {
    pub class: RegClass,
    n: u32,
}

impl fmt::Display for Reg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "%{}{}", self.class.prefix(), self.n)
    }
}

/// A branch target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Label(u32);

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "$L{}", self.0)
    }
}

/// One instruction operand.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Reg(Reg),
    /// An integer immediate.
    Int(i64),
    /// An f32 immediate, printed as its exact bit pattern (`0fXXXXXXXX`).
    F32(f32),
    /// A memory operand `[reg+offset]`.
    Mem(Reg, i64),
    /// A parameter or special-register name (`%tid.x`, a `.param` symbol).
    Sym(String),
    /// A vector of registers `{a, b}`.
    Vec(Vec<Reg>),
    Label(Label),
}

impl From<Reg> for Operand {
    fn from(r: Reg) -> Self {
        Operand::Reg(r)
    }
}

impl From<Label> for Operand {
    fn from(l: Label) -> Self {
        Operand::Label(l)
    }
}

/// An integer immediate operand.
pub fn imm(v: i64) -> Operand {
    Operand::Int(v)
}

/// An f32 immediate operand.
pub fn fimm(v: f32) -> Operand {
    Operand::F32(v)
}

/// A memory operand `[r+off]`.
pub fn mem(r: Reg, off: i64) -> Operand {
    Operand::Mem(r, off)
}

/// A symbolic operand (special register or parameter name).
pub fn sym(s: &str) -> Operand {
    Operand::Sym(s.to_string())
}

impl fmt::Display for Operand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operand::Reg(r) => write!(f, "{r}"),
            Operand::Int(v) => write!(f, "{v}"),
            Operand::F32(v) => write!(f, "0f{:08X}", v.to_bits()),
            Operand::Mem(r, 0) => write!(f, "[{r}]"),
            Operand::Mem(r, off) => write!(f, "[{r}+{off}]"),
            Operand::Sym(s) => write!(f, "{s}"),
            Operand::Vec(rs) => {
                let parts: Vec<String> = rs.iter().map(|r| r.to_string()).collect();
                write!(f, "{{{}}}", parts.join(", "))
            }
            Operand::Label(l) => write!(f, "{l}"),
        }
    }
}

/// One instruction: optional guard predicate, opcode with its type suffixes, operands.
#[derive(Debug, Clone, PartialEq)]
pub struct Instr {
    /// `(predicate, negated)`
    pub guard: Option<(Reg, bool)>,
    pub op: String,
    pub args: Vec<Operand>,
}

/// One line of a kernel body.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    Instr(Instr),
    Label(Label),
    Comment(String),
}

/// The type of a kernel parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamTy {
    /// A 64-bit global pointer.
    Ptr,
    U32,
}

/// Builds one `.entry` kernel.
#[derive(Debug, Clone)]
pub struct KernelBuilder {
    name: String,
    params: Vec<(String, ParamTy)>,
    lines: Vec<Line>,
    next_reg: [u32; 5],
    next_label: u32,
    uses_dynamic_shared: bool,
    max_regs: Option<u32>,
    max_threads: Option<u32>,
}

impl KernelBuilder {
    /// A kernel named `name` with no parameters yet.
    pub fn new(name: &str) -> Self {
        KernelBuilder {
            name: name.to_string(),
            params: Vec::new(),
            lines: Vec::new(),
            next_reg: [0; 5],
            next_label: 0,
            uses_dynamic_shared: false,
            max_regs: None,
            max_threads: None,
        }
    }

    /// The kernel's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Marks that the kernel uses the module's dynamic shared memory array `smem`.
    pub fn use_dynamic_shared(&mut self) {
        self.uses_dynamic_shared = true;
    }

    /// Caps the registers per thread (`.maxnreg`), so more thread blocks fit a multiprocessor.
    pub fn max_regs(&mut self, n: u32) {
        self.max_regs = Some(n);
    }

    /// The register cap set with [`KernelBuilder::max_regs`], if any.
    pub fn reg_cap(&self) -> Option<u32> {
        self.max_regs
    }

    /// Declares the most threads a block of this kernel is launched with (`.maxntid n, 1, 1`),
    /// so ptxas never uses more registers per thread than such a block can launch with (a
    /// large block spills instead of failing to launch). Launching more threads fails.
    pub fn max_threads(&mut self, n: u32) {
        self.max_threads = Some(n);
    }

    /// Whether the kernel uses dynamic shared memory.
    pub fn uses_dynamic_shared(&self) -> bool {
        self.uses_dynamic_shared
    }

    /// Adds a parameter and returns its symbol name.
    pub fn param(&mut self, name: &str, ty: ParamTy) -> String {
        let sym = format!("{}_param_{}", self.name, name);
        self.params.push((sym.clone(), ty));
        sym
    }

    /// A fresh register of `class`.
    pub fn reg(&mut self, class: RegClass) -> Reg {
        let slot = &mut self.next_reg[class.index()];
        let r = Reg { class, n: *slot };
        *slot += 1;
        r
    }

    /// A fresh label (placed later with [`KernelBuilder::place`]).
    pub fn label(&mut self) -> Label {
        let l = Label(self.next_label);
        self.next_label += 1;
        l
    }

    /// Places `label` at the current position.
    pub fn place(&mut self, label: Label) {
        self.lines.push(Line::Label(label));
    }

    /// A comment line.
    pub fn comment(&mut self, text: &str) {
        self.lines.push(Line::Comment(text.to_string()));
    }

    /// An unguarded instruction.
    pub fn ins<I: IntoIterator<Item = Operand>>(&mut self, op: &str, args: I) {
        self.lines.push(Line::Instr(Instr {
            guard: None,
            op: op.to_string(),
            args: args.into_iter().collect(),
        }));
    }

    /// An instruction guarded by `@p` (or `@!p` when `negated`).
    pub fn ins_if<I: IntoIterator<Item = Operand>>(
        &mut self,
        p: Reg,
        negated: bool,
        op: &str,
        args: I,
    ) {
        self.lines.push(Line::Instr(Instr {
            guard: Some((p, negated)),
            op: op.to_string(),
            args: args.into_iter().collect(),
        }));
    }

    /// `bra` to `target`, optionally guarded.
    pub fn bra(&mut self, target: Label) {
        self.ins("bra.uni", [target.into()]);
    }

    /// `@p bra target` (or `@!p`).
    pub fn bra_if(&mut self, p: Reg, negated: bool, target: Label) {
        self.ins_if(p, negated, "bra", [target.into()]);
    }

    /// A new register holding `op a, b`.
    pub fn op2(&mut self, class: RegClass, op: &str, a: Operand, b: Operand) -> Reg {
        let d = self.reg(class);
        self.ins(op, [d.into(), a, b]);
        d
    }

    /// A new register holding `op a, b, c`.
    pub fn op3(&mut self, class: RegClass, op: &str, a: Operand, b: Operand, c: Operand) -> Reg {
        let d = self.reg(class);
        self.ins(op, [d.into(), a, b, c]);
        d
    }

    /// A new register holding `op a`.
    pub fn op1(&mut self, class: RegClass, op: &str, a: Operand) -> Reg {
        let d = self.reg(class);
        self.ins(op, [d.into(), a]);
        d
    }

    /// A new predicate `setp.<cmp> a, b`.
    pub fn setp(&mut self, cmp: &str, a: Operand, b: Operand) -> Reg {
        let p = self.reg(RegClass::Pred);
        self.ins(&format!("setp.{cmp}"), [p.into(), a, b]);
        p
    }

    /// Loads a pointer parameter and converts it to a global address.
    pub fn load_ptr_param(&mut self, sym_name: &str) -> Reg {
        let r = self.reg(RegClass::B64);
        self.ins(
            "ld.param.u64",
            [r.into(), Operand::Sym(format!("[{sym_name}]"))],
        );
        let g = self.reg(RegClass::B64);
        self.ins("cvta.to.global.u64", [g.into(), r.into()]);
        g
    }

    /// Loads a `u32` parameter.
    pub fn load_u32_param(&mut self, sym_name: &str) -> Reg {
        let r = self.reg(RegClass::B32);
        self.ins(
            "ld.param.u32",
            [r.into(), Operand::Sym(format!("[{sym_name}]"))],
        );
        r
    }

    /// `base + index * elem_bytes` as a 64-bit address (index is a 32-bit unsigned register).
    pub fn addr(&mut self, base: Reg, index: Reg, elem_bytes: u32) -> Reg {
        let off = self.op2(
            RegClass::B64,
            "mul.wide.u32",
            index.into(),
            imm(i64::from(elem_bytes)),
        );
        self.op2(RegClass::B64, "add.s64", base.into(), off.into())
    }

    /// Prints the kernel as a PTX `.entry`.
    pub fn finish(&self) -> String {
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = writeln!(s, ".visible .entry {}(", self.name);
        for (i, (p, ty)) in self.params.iter().enumerate() {
            let t = match ty {
                ParamTy::Ptr => ".u64",
                ParamTy::U32 => ".u32",
            };
            let sep = if i + 1 == self.params.len() { "" } else { "," };
            let _ = writeln!(s, "    .param {t} {p}{sep}");
        }
        let _ = writeln!(s, ")");
        if let Some(n) = self.max_regs {
            let _ = writeln!(s, ".maxnreg {n}");
        }
        if let Some(n) = self.max_threads {
            let _ = writeln!(s, ".maxntid {n}, 1, 1");
        }
        let _ = writeln!(s, "{{");
        for class in RegClass::ALL {
            let n = self.next_reg[class.index()];
            if n > 0 {
                let _ = writeln!(s, "    .reg {} %{}<{}>;", class.decl(), class.prefix(), n);
            }
        }
        for line in &self.lines {
            match line {
                Line::Label(l) => {
                    let _ = writeln!(s, "{l}:");
                }
                Line::Comment(c) => {
                    let _ = writeln!(s, "    // {c}");
                }
                Line::Instr(ins) => {
                    let guard = match ins.guard {
                        Some((p, false)) => format!("@{p} "),
                        Some((p, true)) => format!("@!{p} "),
                        None => String::new(),
                    };
                    let args: Vec<String> = ins.args.iter().map(|a| a.to_string()).collect();
                    if args.is_empty() {
                        let _ = writeln!(s, "    {guard}{};", ins.op);
                    } else {
                        let _ = writeln!(s, "    {guard}{} {};", ins.op, args.join(", "));
                    }
                }
            }
        }
        let _ = writeln!(s, "}}");
        s
    }
}

/// A PTX module: header plus kernels.
pub fn module(target: &str, kernels: &[String]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "//");
    let _ = writeln!(s, "// Generated by nsac (PTX backend). Do not edit.");
    let _ = writeln!(s, "//");
    let _ = writeln!(s, ".version 8.0");
    let _ = writeln!(s, ".target {target}");
    let _ = writeln!(s, ".address_size 64");
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "// Dynamic shared memory, used by the kernels that need scratch per block."
    );
    let _ = writeln!(s, ".extern .shared .align 16 .b8 smem[];");
    for k in kernels {
        let _ = writeln!(s);
        s.push_str(k);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_registers_labels_and_immediates_deterministically() {
        let mut b = KernelBuilder::new("k");
        let p = b.param("x", ParamTy::Ptr);
        let base = b.load_ptr_param(&p);
        let l = b.label();
        let r = b.op2(RegClass::F32, "add.f32", fimm(1.0), fimm(-0.5));
        b.place(l);
        b.ins("st.global.f32", [mem(base, 4), r.into()]);
        let text = b.finish();
        assert!(text.contains(".reg .f32 %f<1>;"));
        assert!(text.contains("add.f32 %f0, 0f3F800000, 0fBF000000;"));
        assert!(text.contains("$L0:"));
        assert!(text.contains("st.global.f32 [%rd1+4], %f0;"));
        assert_eq!(text, b.finish());
        assert!(!text.contains(".maxnreg") && !text.contains(".maxntid"));
        assert_eq!(b.reg_cap(), None);
    }

    #[test]
    fn prints_register_and_thread_limits_before_the_body() {
        let mut b = KernelBuilder::new("k");
        b.max_regs(96);
        b.max_threads(512);
        assert_eq!(b.reg_cap(), Some(96));
        let text = b.finish();
        assert!(text.contains(")\n.maxnreg 96\n.maxntid 512, 1, 1\n{"));
    }
}
