//! The tensors of a [`super::Plan`]: each declared once with its name, role, element type,
//! symbolic shape and layout. Sizes that vary per call (batch, lengths, compressed tokens) are
//! symbols here and get values only from a [`super::Sizes`] at run time; head counts and head
//! dims are compiled in and named by symbols too, so a shape reads the same for every problem.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Index into [`super::Plan::tensors`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(pub usize);

impl fmt::Display for TensorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "%{}", self.0)
    }
}

/// Who provides a tensor, who consumes it and how long it lives (serialized by [`Role::name`],
/// as GPU manifests carry it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Provided by the caller under [`Tensor::name`]; never written.
    In,
    /// Produced by one op and returned to the caller.
    Out,
    /// Produced by one op and kept for a later pass (e.g. a forward's log-sum-exp for backward).
    Saved,
    /// A gradient, produced by a backward op and returned.
    Grad,
    /// Persists across calls (caches); provided by the caller, updated in place by its ops.
    State,
    /// Produced and consumed inside one call; a backend may keep it in registers or fuse it away.
    Scratch,
}

impl Role {
    /// The lower-case name of the text form.
    pub fn name(self) -> &'static str {
        match self {
            Role::In => "in",
            Role::Out => "out",
            Role::Saved => "saved",
            Role::Grad => "grad",
            Role::State => "state",
            Role::Scratch => "scratch",
        }
    }

    /// Whether the caller provides the tensor (it has no producing op).
    pub fn is_provided(self) -> bool {
        matches!(self, Role::In | Role::State)
    }
}

/// Element type of a tensor (serialized by [`Elem::name`], as GPU manifests carry it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Elem {
    F32,
    F16,
    Bf16,
    I32,
}

impl Elem {
    /// The lower-case name of the text form and of manifests.
    pub fn name(self) -> &'static str {
        match self {
            Elem::F32 => "f32",
            Elem::F16 => "f16",
            Elem::Bf16 => "bf16",
            Elem::I32 => "i32",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Elem::F16 | Elem::Bf16 => 2,
            Elem::F32 | Elem::I32 => 4,
        }
    }

    /// The element type of a problem's activation tensors.
    pub fn of(dtype: nsac_dsl::problem::DType) -> Elem {
        use nsac_dsl::problem::DType;
        match dtype {
            DType::F32 => Elem::F32,
            DType::F16 => Elem::F16,
            DType::Bf16 => Elem::Bf16,
        }
    }
}

/// One dimension of a tensor's shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Extent {
    /// `B`: batch rows (1 for packed variable-length problems).
    Batch,
    /// `Tq`: query positions per row.
    Queries,
    /// `Tk`: key positions per row (equal to `Tq` in a forward pass).
    Keys,
    /// `NC_<c>`: compressed tokens of compress branch `c` per row, summed over its segments.
    Compressed(String),
    /// `NB_<l>`: selection blocks of `l` keys per query, ⌈Tk / l⌉ (the candidates of the longest
    /// segment are at most that many).
    Blocks(usize),
    /// `HQ`: query heads (compiled in).
    HeadsQ,
    /// `H`: key/value heads (compiled in).
    HeadsKv,
    /// `DQK`: query/key head dim (compiled in).
    Dqk,
    /// `DV`: value head dim (compiled in).
    Dv,
    /// A size the spec fixes (a top-k, a block length, a product of them with head dims).
    Const(usize),
}

impl Extent {
    /// Whether the extent's value is known without the call's sizes.
    pub fn is_compiled_in(&self) -> bool {
        matches!(
            self,
            Extent::HeadsQ | Extent::HeadsKv | Extent::Dqk | Extent::Dv | Extent::Const(_)
        )
    }
}

impl fmt::Display for Extent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Extent::Batch => f.write_str("B"),
            Extent::Queries => f.write_str("Tq"),
            Extent::Keys => f.write_str("Tk"),
            Extent::Compressed(c) => write!(f, "NC_{c}"),
            Extent::Blocks(l) => write!(f, "NB_{l}"),
            Extent::HeadsQ => f.write_str("HQ"),
            Extent::HeadsKv => f.write_str("H"),
            Extent::Dqk => f.write_str("DQK"),
            Extent::Dv => f.write_str("DV"),
            Extent::Const(n) => write!(f, "{n}"),
        }
    }
}

/// How a tensor's elements are laid out in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// Dense, row-major (the FlashAttention / fla convention for the tensors of the contract).
    RowMajor,
}

/// A declared tensor.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tensor {
    pub name: String,
    pub role: Role,
    pub elem: Elem,
    pub shape: Vec<Extent>,
    pub layout: Layout,
}
