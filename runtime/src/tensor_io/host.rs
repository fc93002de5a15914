//! Typed host tensors as they come out of (and go into) files: one enum over the element types
//! nsac reads and writes, with little-endian byte conversion shared by both formats.

use std::collections::BTreeMap;
use std::fmt;

use half::{bf16, f16};
use nsac_kernels::io::Tensor;

/// The element types a tensor file may hold for nsac.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElemType {
    F32,
    F64,
    F16,
    Bf16,
    I32,
    I64,
}

impl ElemType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            ElemType::F16 | ElemType::Bf16 => 2,
            ElemType::F32 | ElemType::I32 => 4,
            ElemType::F64 | ElemType::I64 => 8,
        }
    }
}

impl fmt::Display for ElemType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ElemType::F32 => "f32",
            ElemType::F64 => "f64",
            ElemType::F16 => "f16",
            ElemType::Bf16 => "bf16",
            ElemType::I32 => "i32",
            ElemType::I64 => "i64",
        })
    }
}

/// A scalar type with a fixed little-endian encoding.
pub trait Element: Copy {
    const TYPE: ElemType;
    /// Decodes one element from exactly `TYPE.size()` bytes.
    fn from_le(bytes: &[u8]) -> Self;
    /// Appends the little-endian bytes of `self`.
    fn put_le(self, out: &mut Vec<u8>);
}

macro_rules! element {
    ($t:ty, $variant:ident, $n:literal) => {
        impl Element for $t {
            const TYPE: ElemType = ElemType::$variant;
            fn from_le(bytes: &[u8]) -> Self {
                let mut a = [0u8; $n];
                a.copy_from_slice(bytes);
                <$t>::from_le_bytes(a)
            }
            fn put_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
        impl From<Tensor<$t>> for HostTensor {
            fn from(t: Tensor<$t>) -> Self {
                HostTensor::$variant(t)
            }
        }
    };
}

element!(f32, F32, 4);
element!(f64, F64, 8);
element!(f16, F16, 2);
element!(bf16, Bf16, 2);
element!(i32, I32, 4);
element!(i64, I64, 8);

/// Decodes a little-endian buffer whose length is a multiple of the element size.
pub fn decode_le<T: Element>(bytes: &[u8]) -> Vec<T> {
    bytes.chunks_exact(T::TYPE.size()).map(T::from_le).collect()
}

/// Encodes elements as little-endian bytes.
pub fn encode_le<T: Element>(data: &[T]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() * T::TYPE.size());
    for &x in data {
        x.put_le(&mut out);
    }
    out
}

/// A host tensor of any supported element type.
#[derive(Debug, Clone, PartialEq)]
pub enum HostTensor {
    F32(Tensor<f32>),
    F64(Tensor<f64>),
    F16(Tensor<f16>),
    Bf16(Tensor<bf16>),
    I32(Tensor<i32>),
    I64(Tensor<i64>),
}

/// Runs `$body` with `$t` bound to the inner `Tensor<_>` of any variant.
macro_rules! with_tensor {
    ($x:expr, $t:ident => $body:expr) => {
        match $x {
            HostTensor::F32($t) => $body,
            HostTensor::F64($t) => $body,
            HostTensor::F16($t) => $body,
            HostTensor::Bf16($t) => $body,
            HostTensor::I32($t) => $body,
            HostTensor::I64($t) => $body,
        }
    };
}
pub(crate) use with_tensor;

impl HostTensor {
    /// The element type.
    pub fn elem_type(&self) -> ElemType {
        match self {
            HostTensor::F32(_) => ElemType::F32,
            HostTensor::F64(_) => ElemType::F64,
            HostTensor::F16(_) => ElemType::F16,
            HostTensor::Bf16(_) => ElemType::Bf16,
            HostTensor::I32(_) => ElemType::I32,
            HostTensor::I64(_) => ElemType::I64,
        }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        with_tensor!(self, t => &t.shape)
    }

    /// Number of values held (which a well-formed tensor's shape agrees with).
    pub fn len(&self) -> usize {
        with_tensor!(self, t => t.data.len())
    }

    /// Whether the tensor holds no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values as f32 for a floating-point tensor (f64 rounds to nearest); `None` for
    /// integer tensors.
    pub fn to_f32(&self) -> Option<Tensor<f32>> {
        let data: Vec<f32> = match self {
            HostTensor::F32(t) => t.data.clone(),
            HostTensor::F64(t) => t.data.iter().map(|&x| x as f32).collect(),
            HostTensor::F16(t) => t.data.iter().map(|x| x.to_f32()).collect(),
            HostTensor::Bf16(t) => t.data.iter().map(|x| x.to_f32()).collect(),
            HostTensor::I32(_) | HostTensor::I64(_) => return None,
        };
        Some(Tensor {
            shape: self.shape().to_vec(),
            data,
        })
    }

    /// The values as i64 for an integer tensor; `None` for floating-point tensors.
    pub fn to_i64(&self) -> Option<Vec<i64>> {
        match self {
            HostTensor::I32(t) => Some(t.data.iter().map(|&x| i64::from(x)).collect()),
            HostTensor::I64(t) => Some(t.data.clone()),
            _ => None,
        }
    }
}

/// Named host tensors, ordered by name.
pub type TensorSet = BTreeMap<String, HostTensor>;
