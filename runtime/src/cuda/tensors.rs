//! Device-resident tensors of one call: the buffers a kernel's manifest lays out for the call's
//! [`Sizes`] (inputs, `seg`, scratch, outputs) and the stream their work is ordered on. Inputs
//! are uploaded from the host, replaced in place or borrowed from the caller's device memory;
//! outputs are read by name as device views, or copied to the host only when asked. The buffers
//! live here, not in the kernel, so that one upload serves many launches and every Variant of
//! the plan.

use std::sync::Arc;

use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaSlice, CudaStream, LaunchArgs, PushKernelArg};
use nsac_compiler::ir::{Elem, Plan, Role, Sizes};
use nsac_compiler::ptx::{BufferInfo, SEG};
use nsac_dsl::problem::DType;
use nsac_kernels::io::{InputError, Tensor};

use super::{CudaError, driver};
use crate::tensor_io::{HostTensor, TensorSet};

/// The alignment the kernels need of every input (they copy 16-byte rows with `cp.async`).
pub const INPUT_ALIGN: u64 = 16;

/// Why a buffer of [`DeviceTensors`] cannot be bound, read or launched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TensorsError {
    #[error("no buffer `{name}` in this call's layout (it has: {known})")]
    Unknown { name: String, known: String },
    #[error("buffer `{name}` is {role}, not {wanted}")]
    Role {
        name: String,
        role: &'static str,
        wanted: &'static str,
    },
    #[error(
        "input `{name}` needs {expected} B ({shape:?} of {elem}), the device memory given has {got} B"
    )]
    ByteLength {
        name: String,
        shape: Vec<usize>,
        elem: &'static str,
        expected: usize,
        got: usize,
    },
    #[error(
        "the device memory for input `{name}` at {ptr:#x} is null or not {INPUT_ALIGN}-byte aligned (the kernels copy 16-byte rows)"
    )]
    Misaligned { name: String, ptr: u64 },
    #[error("input `{0}` is not bound: upload it (`set_input`) or bind device memory to it")]
    Unbound(String),
    #[error("{0} belongs to another CUDA context than these tensors")]
    OtherContext(String),
    #[error(
        "these device tensors were laid out for another plan (another spec, heads, head dims or dtype)"
    )]
    OtherPlan,
    #[error("sizes the kernels cannot run: {0}")]
    BadSizes(String),
}

/// One buffer's device memory.
enum Buffer<'a> {
    /// An input nothing was uploaded or bound to yet.
    Unbound,
    /// Allocated here (on the tensors' home stream), freed with the tensors.
    Owned(CudaSlice<u8>),
    /// A caller's slice, borrowed for the tensors' lifetime.
    Borrowed(&'a CudaSlice<u8>),
    /// A caller's raw device pointer (see [`DeviceTensors::bind_input_raw`]).
    Raw(CUdeviceptr),
}

/// The buffers of one call on one device, laid out for its [`Sizes`] by a
/// [`super::CudaKernel`] ([`super::CudaKernel::alloc`], [`super::CudaKernel::upload`]), and the
/// stream its copies and launches are enqueued on (the device's by default,
/// [`DeviceTensors::set_stream`] to change it). Any kernel of the same plan launches them,
/// whatever its Variant. `'a` is the lifetime of caller slices bound with
/// [`DeviceTensors::bind_input`].
pub struct DeviceTensors<'a> {
    plan: Arc<Plan>,
    sizes: Sizes,
    layout: Vec<BufferInfo>,
    buffers: Vec<Buffer<'a>>,
    /// Where the owned buffers are allocated and freed.
    home: Arc<CudaStream>,
    /// Where copies and launches go.
    stream: Arc<CudaStream>,
}

/// How a role reads in a message.
fn role_name(b: &BufferInfo) -> &'static str {
    match b.role {
        Role::In => "an input",
        Role::Scratch if b.name == SEG => "the segment table",
        Role::Scratch => "scratch",
        Role::Out => "an output",
        Role::Saved => "saved for the backward",
        Role::Grad => "a gradient",
        Role::State => "state",
    }
}

/// Bytes of buffer `b` (its elements, at least one for a buffer the call leaves empty, so that
/// every kernel parameter points at memory).
fn alloc_bytes(b: &BufferInfo) -> usize {
    b.numel().max(1) * b.elem_bytes()
}

/// The index of buffer `name` in `layout`.
fn find(layout: &[BufferInfo], name: &str) -> Result<usize, TensorsError> {
    layout
        .iter()
        .position(|b| b.name == name)
        .ok_or_else(|| TensorsError::Unknown {
            name: name.to_string(),
            known: layout
                .iter()
                .map(|b| b.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

fn expect_role(b: &BufferInfo, wanted: Role) -> Result<(), TensorsError> {
    if b.role == wanted {
        return Ok(());
    }
    Err(TensorsError::Role {
        name: b.name.clone(),
        role: role_name(b),
        wanted: role_name(&BufferInfo {
            role: wanted,
            ..b.clone()
        }),
    })
}

/// Checks that `got` bytes of device memory hold input `b` exactly.
fn check_bytes(b: &BufferInfo, got: usize) -> Result<(), TensorsError> {
    expect_role(b, Role::In)?;
    let expected = b.numel() * b.elem_bytes();
    if got != expected {
        return Err(TensorsError::ByteLength {
            name: b.name.clone(),
            shape: b.shape.clone(),
            elem: b.elem.name(),
            expected,
            got,
        });
    }
    Ok(())
}

/// [`check_bytes`], and that `ptr` is a non-null pointer the kernels can read rows from.
fn check_raw(b: &BufferInfo, ptr: CUdeviceptr, bytes: usize) -> Result<(), TensorsError> {
    check_bytes(b, bytes)?;
    if ptr == 0 || !ptr.is_multiple_of(INPUT_ALIGN) {
        return Err(TensorsError::Misaligned {
            name: b.name.clone(),
            ptr,
        });
    }
    Ok(())
}

/// Checks that `sizes` is a forward call the kernels index within its buffers: at least one
/// batch row, as many keys as queries, and segments that partition each row's positions in
/// ascending order, none empty (as [`nsac_dsl::problem::Problem::resolve`] makes them).
pub(super) fn check_sizes(sizes: &Sizes) -> Result<(), TensorsError> {
    let bad = |why: String| Err(TensorsError::BadSizes(why));
    if sizes.batch == 0 || sizes.queries == 0 {
        return bad(format!(
            "{} rows of {} positions",
            sizes.batch, sizes.queries
        ));
    }
    if sizes.keys != sizes.queries {
        return bad(format!(
            "{} keys for {} queries (a forward call has as many)",
            sizes.keys, sizes.queries
        ));
    }
    let mut at = 0;
    for &(s, e) in &sizes.segments {
        if s != at || e <= s {
            return bad(format!(
                "segments {:?} do not partition 0..{} in ascending order",
                sizes.segments, sizes.queries
            ));
        }
        at = e;
    }
    if at != sizes.queries {
        return bad(format!(
            "segments {:?} do not partition 0..{} in ascending order",
            sizes.segments, sizes.queries
        ));
    }
    Ok(())
}

/// Checks host tensor `t` against input `b`: its shape, as many values, all finite.
fn check_host(b: &BufferInfo, t: &Tensor<f32>) -> Result<(), CudaError> {
    expect_role(b, Role::In)?;
    if t.shape != b.shape {
        return Err(InputError::BadShape {
            name: b.name.clone(),
            got: t.shape.clone(),
            expected: b.shape.clone(),
        }
        .into());
    }
    if t.data.len() != b.numel() {
        return Err(InputError::BadLength {
            name: b.name.clone(),
            shape: t.shape.clone(),
            got: t.data.len(),
            expected: b.numel(),
        }
        .into());
    }
    if t.data.iter().any(|x| !x.is_finite()) {
        return Err(InputError::NonFinite(b.name.clone()).into());
    }
    Ok(())
}

/// `data` in `dtype`, little-endian: what the kernels read.
pub(super) fn to_bytes(data: &[f32], dtype: DType) -> Vec<u8> {
    match dtype {
        DType::F32 => data.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::F16 => data
            .iter()
            .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
            .collect(),
        DType::Bf16 => data
            .iter()
            .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
            .collect(),
    }
}

/// The host tensor buffer `b` holds in `bytes` (its device copy, perhaps padded).
fn decode(b: &BufferInfo, bytes: &[u8]) -> Result<HostTensor, CudaError> {
    let need = b.numel() * b.elem_bytes();
    let bytes = bytes.get(..need).ok_or_else(|| {
        CudaError::Manifest(format!(
            "buffer `{}` holds {} B, its shape needs {need}",
            b.name,
            bytes.len()
        ))
    })?;
    let shape = b.shape.clone();
    let w4 = || bytes.chunks_exact(4).map(|c| [c[0], c[1], c[2], c[3]]);
    let w2 = || bytes.chunks_exact(2).map(|c| [c[0], c[1]]);
    Ok(match b.elem {
        Elem::F32 => HostTensor::F32(Tensor {
            shape,
            data: w4().map(f32::from_le_bytes).collect(),
        }),
        Elem::I32 => HostTensor::I32(Tensor {
            shape,
            data: w4().map(i32::from_le_bytes).collect(),
        }),
        Elem::F16 => HostTensor::F16(Tensor {
            shape,
            data: w2().map(half::f16::from_le_bytes).collect(),
        }),
        Elem::Bf16 => HostTensor::Bf16(Tensor {
            shape,
            data: w2().map(half::bf16::from_le_bytes).collect(),
        }),
    })
}

/// Whether two streams' contexts are the same CUDA context.
fn same_context(a: &CudaStream, b: &CudaStream) -> bool {
    a.context().cu_ctx() == b.context().cu_ctx()
}

impl<'a> DeviceTensors<'a> {
    /// Allocates the buffers of `layout` on `home` (inputs left unbound, scratch and outputs
    /// zeroed) and uploads `seg`.
    pub(super) fn allocate(
        plan: Arc<Plan>,
        sizes: Sizes,
        layout: Vec<BufferInfo>,
        seg: &[i32],
        home: Arc<CudaStream>,
    ) -> Result<DeviceTensors<'a>, CudaError> {
        let mut buffers = Vec::with_capacity(layout.len());
        for b in &layout {
            let buffer = match b.role {
                Role::In | Role::State => Buffer::Unbound,
                Role::Scratch if b.name == SEG => {
                    let bytes: Vec<u8> = seg.iter().flat_map(|x| x.to_le_bytes()).collect();
                    if bytes.len() != b.numel() * b.elem_bytes() {
                        return Err(CudaError::Manifest(format!(
                            "the segment table has {} B, buffer `{}` {:?} needs {}",
                            bytes.len(),
                            b.name,
                            b.shape,
                            b.numel() * b.elem_bytes()
                        )));
                    }
                    Buffer::Owned(driver(
                        || "copying the segment table to the device".into(),
                        home.clone_htod(&bytes),
                    )?)
                }
                Role::Scratch | Role::Out | Role::Saved | Role::Grad => Buffer::Owned(driver(
                    || format!("allocating buffer `{}`", b.name),
                    home.alloc_zeros::<u8>(alloc_bytes(b)),
                )?),
            };
            buffers.push(buffer);
        }
        Ok(DeviceTensors {
            plan,
            sizes,
            layout,
            buffers,
            stream: home.clone(),
            home,
        })
    }

    /// The sizes of the call the buffers are laid out for.
    pub fn sizes(&self) -> &Sizes {
        &self.sizes
    }

    /// Every buffer (name, role, element type, shape), in the manifest's order.
    pub fn layout(&self) -> &[BufferInfo] {
        &self.layout
    }

    /// The element type of the inputs.
    pub fn dtype(&self) -> DType {
        self.plan.consts.dtype
    }

    /// The stream copies and launches are enqueued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The names of the outputs (`o`, `o_<b>`, `idx_<b>`), in the manifest's order.
    pub fn output_names(&self) -> impl Iterator<Item = &str> {
        self.layout
            .iter()
            .filter(|b| b.role == Role::Out)
            .map(|b| b.name.as_str())
    }

    pub(super) fn plan(&self) -> &Arc<Plan> {
        &self.plan
    }

    /// Enqueues later copies and launches on `stream` (e.g. a caller's current stream), after
    /// the work already enqueued on the previous one. `stream` must belong to the tensors'
    /// CUDA context.
    pub fn set_stream(&mut self, stream: Arc<CudaStream>) -> Result<(), CudaError> {
        if !same_context(&stream, &self.home) {
            return Err(TensorsError::OtherContext("the stream".into()).into());
        }
        if *stream != *self.stream {
            driver(
                || "ordering the new stream after the old".into(),
                stream.join(&self.stream),
            )?;
            self.stream = stream;
        }
        Ok(())
    }

    /// Uploads `bytes` to a new buffer on the home stream and orders the current stream after
    /// it.
    fn upload_owned(&self, name: &str, bytes: &[u8]) -> Result<CudaSlice<u8>, CudaError> {
        let slice = driver(
            || format!("copying input `{name}` to the device"),
            self.home.clone_htod(bytes),
        )?;
        if *self.stream != *self.home {
            driver(
                || "ordering the stream after an upload".into(),
                self.stream.join(&self.home),
            )?;
        }
        Ok(slice)
    }

    /// Sets input `name` to the host tensor `t` (f32 values, converted to the inputs' dtype;
    /// its shape must be the layout's). An uploaded input is overwritten in place, on the
    /// stream, after the launches already enqueued; an unbound or borrowed one gets a buffer
    /// of its own (the caller's memory is not written).
    pub fn set_input(&mut self, name: &str, t: &Tensor<f32>) -> Result<(), CudaError> {
        let i = find(&self.layout, name)?;
        check_host(&self.layout[i], t)?;
        let bytes = to_bytes(&t.data, self.dtype());
        if let Buffer::Owned(slice) = &mut self.buffers[i] {
            return driver(
                || format!("copying input `{name}` to the device"),
                self.stream.memcpy_htod(&bytes, slice),
            );
        }
        let slice = self.upload_owned(name, &bytes)?;
        self.buffers[i] = Buffer::Owned(slice);
        Ok(())
    }

    /// Binds input `name` to the caller's device buffer `slice`, borrowed while the tensors
    /// live: it must hold the input exactly (the layout's shape in the inputs' dtype,
    /// row-major, little-endian) and belong to the tensors' context. Writes to it on other
    /// streams are ordered before the launches by cudarc's event tracking when it manages
    /// several streams, else by the caller (e.g. by writing on the tensors' stream).
    pub fn bind_input(&mut self, name: &str, slice: &'a CudaSlice<u8>) -> Result<(), CudaError> {
        let i = find(&self.layout, name)?;
        check_bytes(&self.layout[i], slice.num_bytes())?;
        if slice.context().cu_ctx() != self.home.context().cu_ctx() {
            return Err(
                TensorsError::OtherContext(format!("the device buffer for `{name}`")).into(),
            );
        }
        self.buffers[i] = Buffer::Borrowed(slice);
        Ok(())
    }

    /// Binds input `name` to `bytes` bytes of caller device memory at `ptr` (a PyTorch
    /// tensor's `data_ptr()`, say). `bytes` must be the input's exact size and `ptr` non-null
    /// and [`INPUT_ALIGN`]-byte aligned; both are checked.
    ///
    /// # Safety
    ///
    /// Until the input is bound again or the tensors are dropped: `ptr` must point to `bytes`
    /// bytes of device memory that stays allocated and is accessible from the tensors' CUDA
    /// context; it must hold the input (the layout's shape in the inputs' dtype, row-major,
    /// little-endian) when a launch reads it; and no work may write it while a launch reading
    /// it can run — the caller orders such writes, e.g. by making them on the tensors' stream
    /// ([`DeviceTensors::set_stream`]). The kernels only read inputs.
    pub unsafe fn bind_input_raw(
        &mut self,
        name: &str,
        ptr: CUdeviceptr,
        bytes: usize,
    ) -> Result<(), CudaError> {
        let i = find(&self.layout, name)?;
        check_raw(&self.layout[i], ptr, bytes)?;
        self.buffers[i] = Buffer::Raw(ptr);
        Ok(())
    }

    /// Pushes buffer `name` as the next kernel argument.
    pub(super) fn push_arg<'s>(
        &'s self,
        args: &mut LaunchArgs<'s>,
        name: &str,
    ) -> Result<(), CudaError> {
        let i = find(&self.layout, name)?;
        match &self.buffers[i] {
            Buffer::Owned(s) => args.arg(s),
            Buffer::Borrowed(s) => args.arg(*s),
            Buffer::Raw(ptr) => args.arg(ptr),
            Buffer::Unbound => return Err(TensorsError::Unbound(name.to_string()).into()),
        };
        Ok(())
    }

    /// Fails when some input is unbound.
    pub(super) fn check_bound(&self) -> Result<(), CudaError> {
        match self
            .layout
            .iter()
            .zip(&self.buffers)
            .find(|(_, b)| matches!(b, Buffer::Unbound))
        {
            Some((info, _)) => Err(TensorsError::Unbound(info.name.clone()).into()),
            None => Ok(()),
        }
    }

    /// The device buffer of output `name`, to hand on without a copy: it holds the results of
    /// the launches enqueued on [`DeviceTensors::stream`], once they have run.
    pub fn output(&self, name: &str) -> Result<&CudaSlice<u8>, CudaError> {
        let i = find(&self.layout, name)?;
        expect_role(&self.layout[i], Role::Out)?;
        match &self.buffers[i] {
            Buffer::Owned(s) => Ok(s),
            _ => Err(TensorsError::Unbound(name.to_string()).into()),
        }
    }

    /// Output `name` copied to the host after the work enqueued on the stream (f32 outputs
    /// as [`HostTensor::F32`], selected blocks as [`HostTensor::I32`]); waits for the stream
    /// and so reports any failure of the launches.
    pub fn download(&self, name: &str) -> Result<HostTensor, CudaError> {
        let slice = self.output(name)?;
        let bytes = driver(
            || format!("copying output `{name}` to the host"),
            self.stream.clone_dtoh(slice),
        )?;
        self.synchronize()?;
        decode(&self.layout[find(&self.layout, name)?], &bytes)
    }

    /// Every output, under its name.
    pub fn download_outputs(&self) -> Result<TensorSet, CudaError> {
        self.output_names()
            .map(|name| Ok((name.to_string(), self.download(name)?)))
            .collect()
    }

    /// Waits for the work enqueued on the stream; a failed kernel surfaces here.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        driver(
            || "waiting for the kernels".into(),
            self.stream.synchronize(),
        )
    }
}

impl Drop for DeviceTensors<'_> {
    fn drop(&mut self) {
        // The owned buffers are freed on their home stream: make it wait for the work on the
        // current one, which may still use them. A drop cannot report, so a failure is left in
        // the context for its next checked call.
        if *self.stream != *self.home {
            let ctx = self.home.context();
            ctx.record_err(self.home.join(&self.stream));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(name: &str, shape: &[usize], elem: Elem) -> BufferInfo {
        BufferInfo {
            name: name.into(),
            role: Role::In,
            elem,
            shape: shape.to_vec(),
        }
    }

    fn layout() -> Vec<BufferInfo> {
        vec![
            input("q", &[1, 7, 4, 16], Elem::Bf16),
            BufferInfo {
                name: SEG.into(),
                role: Role::Scratch,
                elem: Elem::I32,
                shape: vec![7, 3],
            },
            BufferInfo {
                name: "o".into(),
                role: Role::Out,
                elem: Elem::F32,
                shape: vec![1, 7, 4, 16],
            },
        ]
    }

    #[test]
    fn buffers_are_found_by_name_with_their_role() {
        let l = layout();
        assert_eq!(find(&l, "o"), Ok(2));
        let Err(TensorsError::Unknown { name, known }) = find(&l, "k") else {
            panic!("k is not in the layout");
        };
        assert_eq!((name.as_str(), known.as_str()), ("k", "q, seg, o"));
        assert_eq!(
            expect_role(&l[2], Role::In),
            Err(TensorsError::Role {
                name: "o".into(),
                role: "an output",
                wanted: "an input"
            })
        );
        assert_eq!(expect_role(&l[2], Role::Out), Ok(()));
    }

    #[test]
    fn borrowed_memory_must_hold_the_input_exactly() {
        let l = layout();
        let q = &l[0];
        let exact = 7 * 4 * 16 * 2;
        assert_eq!(check_bytes(q, exact), Ok(()));
        for got in [exact - 2, exact + 2, 7 * 4 * 16 * 4, 0] {
            assert_eq!(
                check_bytes(q, got),
                Err(TensorsError::ByteLength {
                    name: "q".into(),
                    shape: vec![1, 7, 4, 16],
                    elem: "bf16",
                    expected: exact,
                    got
                })
            );
        }
        // only inputs can be bound
        assert!(matches!(
            check_bytes(&l[1], 7 * 3 * 4),
            Err(TensorsError::Role { .. })
        ));
        assert_eq!(check_raw(q, 0x7f00_0000_0100, exact), Ok(()));
        for ptr in [0, 0x7f00_0000_0108, 0x7f00_0000_0101] {
            assert_eq!(
                check_raw(q, ptr, exact),
                Err(TensorsError::Misaligned {
                    name: "q".into(),
                    ptr
                })
            );
        }
        assert!(matches!(
            check_raw(q, 0x7f00_0000_0100, exact + 16),
            Err(TensorsError::ByteLength { .. })
        ));
    }

    #[test]
    fn only_sizes_of_a_forward_call_are_laid_out() {
        let sizes = |batch, queries, keys, segments: &[(usize, usize)]| Sizes {
            batch,
            queries,
            keys,
            segments: segments.to_vec(),
        };
        assert_eq!(check_sizes(&sizes(2, 301, 301, &[(0, 301)])), Ok(()));
        assert_eq!(
            check_sizes(&sizes(1, 410, 410, &[(0, 77), (77, 410)])),
            Ok(())
        );
        for bad in [
            sizes(0, 301, 301, &[(0, 301)]),
            sizes(1, 0, 0, &[]),
            sizes(1, 301, 300, &[(0, 301)]),
            sizes(1, 301, 301, &[]),
            sizes(1, 301, 301, &[(0, 300)]),
            sizes(1, 301, 301, &[(0, 400)]),
            sizes(1, 10, 10, &[(0, 5), (3, 10)]),
            sizes(1, 10, 10, &[(0, 5), (5, 5), (5, 10)]),
            sizes(1, 10, 10, &[(5, 15), (0, 5)]),
        ] {
            assert!(
                matches!(check_sizes(&bad), Err(TensorsError::BadSizes(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn host_inputs_are_checked_against_the_layout() {
        let l = layout();
        let good = Tensor {
            shape: vec![1, 7, 4, 16],
            data: (0..448).map(|i| (i as f32 * 0.37).sin()).collect(),
        };
        assert!(check_host(&l[0], &good).is_ok());
        let wrong_shape = Tensor {
            shape: vec![1, 8, 4, 16],
            ..good.clone()
        };
        assert!(matches!(
            check_host(&l[0], &wrong_shape),
            Err(CudaError::Input(InputError::BadShape { .. }))
        ));
        let short = Tensor {
            data: good.data[1..].to_vec(),
            ..good.clone()
        };
        assert!(matches!(
            check_host(&l[0], &short),
            Err(CudaError::Input(InputError::BadLength { .. }))
        ));
        let mut nan = good.clone();
        nan.data[100] = f32::NAN;
        assert!(matches!(
            check_host(&l[0], &nan),
            Err(CudaError::Input(InputError::NonFinite(_)))
        ));
        assert!(matches!(
            check_host(&l[2], &good),
            Err(CudaError::Tensors(TensorsError::Role { .. }))
        ));
    }

    #[test]
    fn downloads_decode_by_element_type() {
        let l = layout();
        let want: Vec<f32> = (0..448).map(|i| (i as f32 * 0.71).cos() * 3.0).collect();
        // a padded device copy decodes to the shape's elements
        let mut bytes = to_bytes(&want, DType::F32);
        bytes.extend([0xff; 4]);
        let HostTensor::F32(t) = decode(&l[2], &bytes).expect("decodes") else {
            panic!("o is f32");
        };
        assert_eq!(t.shape, [1, 7, 4, 16]);
        assert_eq!(t.data, want);
        assert!(decode(&l[2], &bytes[..100]).is_err());
        let idx: Vec<i32> = (0..21).map(|i| i * 37 - 300).collect();
        let raw: Vec<u8> = idx.iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(
            decode(&l[1], &raw).expect("decodes"),
            HostTensor::I32(Tensor {
                shape: vec![7, 3],
                data: idx
            })
        );
        let halves = to_bytes(&want, DType::Bf16);
        let HostTensor::Bf16(h) = decode(&l[0], &halves).expect("decodes") else {
            panic!("q is bf16");
        };
        let back: Vec<f32> = h.data.iter().map(|x| x.to_f32()).collect();
        let rounded: Vec<f32> = want
            .iter()
            .map(|&x| half::bf16::from_f32(x).to_f32())
            .collect();
        assert_eq!(back, rounded);
        assert_eq!(alloc_bytes(&l[0]), 896);
    }
}
