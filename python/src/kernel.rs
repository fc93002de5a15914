//! `Kernel`: one spec, its heads/dims overrides applied, compiled for the CPU (kernels built
//! on first use per Variant and kept) and for the f64 oracle. Its calls take a dict of numpy
//! float32 arrays under the README's tensor names, borrowed in place, and release the GIL
//! while the kernels run. The training calls are the autograd pair: `forward_train` returns
//! `o` and what the backward needs (saved tensors, handed to Python so that torch keeps them —
//! nothing is hidden in this object), `backward` the gradient of every input.

use nsac::compiler::ir::{Elem, Extent, Op, Plan, Role};
use nsac::dsl::problem::{Sequences, Shape};
use nsac::dsl::spec::{HeadDim, Heads};
use nsac::kernels::io::{Tensor, expected_inputs};
use nsac::runtime::cpu::{OutputRef, OutputRefs, Saved};
use nsac::{Attention, Compiled, Device, Error, Options, Sizes};
use numpy::{
    PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyReadwriteArrayDyn, PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyKeyError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::arrays::{Borrowed, borrow_f32, host_to_numpy, tensor_ref, to_numpy};
use crate::errors::{NsacError, SpecError, cpu_to_py, to_py};

#[pyclass(frozen, module = "nsac._nsac")]
pub struct Kernel {
    attn: Attention,
    cpu: Compiled,
    reference: Compiled,
    heads: Heads,
    head_dim: HeadDim,
}

/// Parses spec text, rendering its diagnostics (uncoloured) against the text itself.
fn parse_spec(text: &str) -> PyResult<Attention> {
    // YAML is a mapping (`attention: NAME`, `---`, …); the text form opens with
    // `attention NAME {`. Leading comments and blank lines are the same in both.
    let first = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or("");
    let yaml = first.starts_with("---")
        || first
            .split_once(':')
            .is_some_and(|(key, _)| !key.contains(char::is_whitespace) && !key.contains('{'));
    let parsed = if yaml {
        nsac::dsl::parse_yaml(text)
    } else {
        nsac::dsl::parse_text(text)
    };
    let source = if yaml { "<spec.yaml>" } else { "<spec.nsa>" };
    parsed.map(Attention::from_spec).map_err(|e| {
        SpecError::new_err(
            nsac::dsl::diagnostics::render(&e, source, text, false)
                .trim_end()
                .to_string(),
        )
    })
}

/// One extent of a saved tensor as Python reads it: `B`, `T` or a number.
fn extent_name(plan: &Plan, e: &Extent) -> PyResult<String> {
    Ok(match e {
        Extent::Batch => "B".into(),
        Extent::Queries | Extent::Keys => "T".into(),
        other if other.is_compiled_in() => Sizes {
            batch: 1,
            queries: 1,
            keys: 1,
            segments: vec![(0, 1)],
        }
        .extent(plan, other)
        .map_err(|e| PyValueError::new_err(e.to_string()))?
        .to_string(),
        other => {
            return Err(PyValueError::new_err(format!(
                "a saved tensor has the extent {other:?}, which depends on the call's segments"
            )));
        }
    })
}

impl Kernel {
    fn shape(&self, q_shape: Option<&[usize]>, cu_seqlens: Option<Vec<usize>>) -> PyResult<Shape> {
        let q = q_shape.ok_or_else(|| PyKeyError::new_err("the inputs have no `q`"))?;
        if q.len() != 4 {
            return Err(PyValueError::new_err(format!(
                "tensor `q` must be [B, T, HQ, DQK], got shape {q:?}"
            )));
        }
        let sequences = match cu_seqlens {
            Some(cu_seqlens) => Sequences::Varlen { cu_seqlens },
            None => Sequences::Batched {
                batch: q[0],
                len: q[1],
            },
        };
        let shape = self
            .cpu
            .problem(sequences)
            .resolve(self.attn.spec())
            .map_err(|e| to_py(e.into()))?;
        if shape.batch != q[0] || shape.seq_len != q[1] {
            return Err(PyValueError::new_err(format!(
                "cu_seqlens describe [B, T] = [{}, {}] but `q` has shape {q:?} (varlen inputs pack every segment into B = 1)",
                shape.batch, shape.seq_len
            )));
        }
        Ok(shape)
    }
}

#[pymethods]
impl Kernel {
    /// Loads `spec` (a file path when `is_path`, else spec text) with optional heads
    /// `(q, kv)` and head dims `(qk, v)` overrides and a CPU thread count.
    #[new]
    #[pyo3(signature = (spec, *, is_path, heads=None, head_dim=None, threads=None))]
    fn new(
        spec: &str,
        is_path: bool,
        heads: Option<(u32, u32)>,
        head_dim: Option<(u32, u32)>,
        threads: Option<usize>,
    ) -> PyResult<Kernel> {
        let attn = if is_path {
            Attention::load(spec).map_err(to_py)?
        } else {
            parse_spec(spec)?
        };
        if threads == Some(0) {
            return Err(PyValueError::new_err("threads must be at least 1"));
        }
        let options = Options {
            heads: heads.map(|(q, kv)| Heads { q, kv }),
            head_dim: head_dim.map(|(qk, v)| HeadDim { qk, v }),
            threads,
            ..Options::default()
        };
        let cpu = attn.compile(&Device::Cpu, &options).map_err(to_py)?;
        let reference = attn
            .compile(
                &Device::Reference,
                &Options {
                    threads: None,
                    ..options.clone()
                },
            )
            .map_err(to_py)?;
        // Resolving a one-token problem checks the overrides against the spec (a group size
        // that does not divide, a zero head dim) now rather than on the first call.
        let shape = cpu
            .problem(Sequences::Batched { batch: 1, len: 1 })
            .resolve(attn.spec())
            .map_err(|e| to_py(Error::Problem(e)))?;
        Ok(Kernel {
            attn,
            cpu,
            reference,
            heads: shape.heads,
            head_dim: shape.head_dim,
        })
    }

    /// The spec's name.
    #[getter]
    fn name(&self) -> String {
        self.attn.spec().name.clone()
    }

    /// `(query heads, key/value heads)` after overrides.
    #[getter]
    fn heads(&self) -> (u32, u32) {
        (self.heads.q, self.heads.kv)
    }

    /// `(query-key dim, value dim)` after overrides.
    #[getter]
    fn head_dim(&self) -> (u32, u32) {
        (self.head_dim.qk, self.head_dim.v)
    }

    /// The spec in canonical text form.
    fn spec_text(&self) -> String {
        nsac::dsl::format::format_spec(self.attn.spec())
    }

    /// The tensors a call on `batch` rows of `tokens` reads, in order: `(name, shape)`.
    fn inputs(&self, batch: usize, tokens: usize) -> PyResult<Vec<(String, Vec<usize>)>> {
        let shape = self
            .cpu
            .problem(Sequences::Batched { batch, len: tokens })
            .resolve(self.attn.spec())
            .map_err(|e| to_py(e.into()))?;
        Ok(expected_inputs(self.attn.spec(), &shape)
            .into_iter()
            .map(|i| (i.name, i.shape))
            .collect())
    }

    /// The tensors a call reads, in order, with symbolic shapes: `(name, dims)`, each dim `"B"`
    /// (batch rows), `"T"` (tokens per row) or a number, as the forward plan declares them.
    fn input_layout(&self) -> PyResult<Vec<(String, Vec<String>)>> {
        let problem = self.cpu.problem(Sequences::Batched { batch: 1, len: 1 });
        let shape = problem
            .resolve(self.attn.spec())
            .map_err(|e| to_py(e.into()))?;
        let plan = self.attn.plan(&problem).map_err(to_py)?;
        expected_inputs(self.attn.spec(), &shape)
            .into_iter()
            .map(|input| {
                let id = plan.tensor_named(&input.name).ok_or_else(|| {
                    PyValueError::new_err(format!("the plan has no input `{}`", input.name))
                })?;
                let dims = plan
                    .tensor(id)
                    .shape
                    .iter()
                    .map(|e| extent_name(&plan, e))
                    .collect::<PyResult<Vec<_>>>()?;
                Ok((input.name, dims))
            })
            .collect()
    }

    /// What `forward_train` saves, in a stable order: `(name, "f32" | "i32", dims)`, each dim
    /// `"B"` (batch rows), `"T"` (tokens per row) or a number — enough for a fake (meta)
    /// implementation to allocate them without running anything.
    fn saved_layout(&self) -> PyResult<Vec<(String, &'static str, Vec<String>)>> {
        let shape = self
            .cpu
            .problem(Sequences::Batched { batch: 1, len: 1 })
            .resolve(self.attn.spec())
            .map_err(|e| to_py(e.into()))?;
        let plan = self
            .attn
            .backward_plan(&self.cpu.problem(Sequences::Batched {
                batch: shape.batch,
                len: shape.seq_len,
            }));
        let plan = plan.map_err(to_py)?;
        // The same tensors, under the same names, as `CpuProgram::forward_train` saves: every
        // `Saved` tensor, each attention's output and each top-k's indices.
        let mut ids: Vec<_> = plan.tensors_with(Role::Saved).collect();
        for op in &plan.ops {
            match op {
                Op::Attend(a) => ids.push(a.out),
                Op::TopK(k) => ids.push(k.idx),
                _ => {}
            }
        }
        let mut layout = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for id in ids {
            let t = plan.tensor(id);
            if !seen.insert(t.name.clone()) {
                continue;
            }
            let elem = match t.elem {
                Elem::I32 => "i32",
                _ => "f32",
            };
            let dims = t
                .shape
                .iter()
                .map(|e| extent_name(&plan, e))
                .collect::<PyResult<Vec<_>>>()?;
            layout.push((t.name.clone(), elem, dims));
        }
        layout.sort();
        Ok(layout)
    }

    /// Tunes the CPU kernel for `batch` rows of `tokens` (`nsac tune`): the best Variant is
    /// stored in the tuning database (`db`, default the user's cache) unless it already holds
    /// one for this spec, problem bucket and machine (`retune` searches again), and later calls
    /// take it. Returns `{variant, threads, source: "tuned" | "stored", best_ms}`.
    #[pyo3(signature = (batch, tokens, retune=false, db=None))]
    fn tune<'py>(
        &self,
        py: Python<'py>,
        batch: usize,
        tokens: usize,
        retune: bool,
        db: Option<std::path::PathBuf>,
    ) -> PyResult<Bound<'py, PyDict>> {
        use nsac::runtime::tune::cached::Tuned;
        use nsac::runtime::tune::cpu::{CpuTuneOptions, tune_cpu};
        use nsac::runtime::tune::db::TuningDb;
        let shape = self
            .cpu
            .problem(Sequences::Batched { batch, len: tokens })
            .resolve(self.attn.spec())
            .map_err(|e| to_py(e.into()))?;
        let db = match db {
            Some(path) => TuningDb::open(path),
            None => TuningDb::open_default()
                .map_err(|e| NsacError::new_err(format!("no tuning database: {e}")))?,
        };
        let spec = self.attn.spec();
        let (tuned, _warnings) = py
            .detach(|| {
                tune_cpu(
                    spec,
                    &shape,
                    &db,
                    &CpuTuneOptions::for_spec(spec),
                    retune,
                    &mut |_| {},
                )
            })
            .map_err(|e| NsacError::new_err(format!("tuning failed: {e}")))?;
        let (source, best_ms) = match &tuned {
            Tuned::Stored { best_us, .. } => ("stored", best_us / 1e3),
            Tuned::Fresh(r) => ("tuned", r.best_time.as_secs_f64() * 1e3),
        };
        let best = tuned.variant();
        let dict = PyDict::new(py);
        dict.set_item("variant", best.variant.to_string())?;
        dict.set_item("threads", best.threads)?;
        dict.set_item("source", source)?;
        dict.set_item("best_ms", best_ms)?;
        dict.set_item("db", db.path().display().to_string())?;
        Ok(dict)
    }

    /// The forward pass on `inputs` (name → float32 array, read in place), writing `o` into
    /// `out` \[B,T,HQ,DV\] in place.
    #[pyo3(signature = (inputs, cu_seqlens, out))]
    fn forward(
        &self,
        py: Python<'_>,
        inputs: &Bound<'_, PyDict>,
        cu_seqlens: Option<Vec<usize>>,
        mut out: PyReadwriteArrayDyn<'_, f32>,
    ) -> PyResult<()> {
        let borrowed = Borrowed::of(inputs)?;
        let shape = self.shape(borrowed.shape("q"), cu_seqlens)?;
        let want = shape.output_dims();
        if out.shape() != want {
            return Err(PyValueError::new_err(format!(
                "output `o` has shape {:?}, expected {want:?}",
                out.shape()
            )));
        }
        let (kernel, threads) = self.cpu.cpu_kernel_for(&shape, false).map_err(to_py)?;
        let refs = borrowed.refs()?;
        let o = out.as_slice_mut().map_err(|_| {
            PyValueError::new_err("output `o` is not C-contiguous (make it contiguous first)")
        })?;
        let sizes = Sizes::of(&shape);
        py.detach(|| {
            let mut outputs = OutputRefs::new();
            outputs.insert("o", OutputRef::F32(o));
            kernel.run_into(&sizes, &refs, &mut outputs, threads)
        })
        .map_err(cpu_to_py)
    }

    /// The forward pass of training: `(o, saved)`, `saved` a dict of the tensors named by
    /// `saved_layout` (float32 or int32 arrays).
    #[pyo3(signature = (inputs, cu_seqlens))]
    fn forward_train<'py>(
        &self,
        py: Python<'py>,
        inputs: &Bound<'py, PyDict>,
        cu_seqlens: Option<Vec<usize>>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyDict>)> {
        let borrowed = Borrowed::of(inputs)?;
        let shape = self.shape(borrowed.shape("q"), cu_seqlens)?;
        let (kernel, threads) = self.cpu.cpu_kernel_for(&shape, true).map_err(to_py)?;
        let refs = borrowed.refs()?;
        let sizes = Sizes::of(&shape);
        let (out, saved) = py
            .detach(|| kernel.forward_train_refs(&sizes, &refs, threads))
            .map_err(cpu_to_py)?;
        let dict = PyDict::new(py);
        for (name, t) in saved.f32 {
            dict.set_item(name, to_numpy(py, t)?)?;
        }
        for (name, t) in saved.i32 {
            dict.set_item(name, to_numpy(py, t)?)?;
        }
        Ok((to_numpy(py, out.o)?, dict))
    }

    /// The gradient of every input for the upstream gradient `d_o` \[B,T,HQ,DV\]: a dict
    /// `d<input>` → float32 array of the input's shape, from the forward's `inputs` and what
    /// `forward_train` saved.
    #[pyo3(signature = (inputs, cu_seqlens, saved, d_o))]
    fn backward<'py>(
        &self,
        py: Python<'py>,
        inputs: &Bound<'py, PyDict>,
        cu_seqlens: Option<Vec<usize>>,
        saved: &Bound<'py, PyDict>,
        d_o: PyReadonlyArrayDyn<'py, f32>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let borrowed = Borrowed::of(inputs)?;
        let shape = self.shape(borrowed.shape("q"), cu_seqlens)?;
        let (kernel, threads) = self.cpu.cpu_kernel_for(&shape, true).map_err(to_py)?;
        // The saved tensors are copied back into the executor's own type (one memcpy each).
        let mut state = Saved::default();
        for (key, value) in saved.iter() {
            let name: String = key.extract()?;
            if let Ok(a) = value.cast::<PyArrayDyn<i32>>() {
                let a = a.readonly();
                let r = tensor_ref(&name, &a)?;
                state.i32.insert(
                    name,
                    Tensor {
                        shape: r.shape.to_vec(),
                        data: r.data.to_vec(),
                    },
                );
            } else {
                let a = borrow_f32(&name, &value)?;
                let r = tensor_ref(&name, &a)?;
                state.f32.insert(
                    name,
                    Tensor {
                        shape: r.shape.to_vec(),
                        data: r.data.to_vec(),
                    },
                );
            }
        }
        let d_o_ref = tensor_ref("do", &d_o)?;
        let want = shape.output_dims();
        if d_o_ref.shape != want {
            return Err(PyValueError::new_err(format!(
                "the upstream gradient has shape {:?}, expected {want:?}",
                d_o_ref.shape
            )));
        }
        let refs = borrowed.refs()?;
        let sizes = Sizes::of(&shape);
        let grads = py
            .detach(|| kernel.backward_refs(&sizes, &refs, &state, d_o_ref.data, threads))
            .map_err(cpu_to_py)?;
        let dict = PyDict::new(py);
        for (name, t) in grads {
            dict.set_item(name, to_numpy(py, t)?)?;
        }
        Ok(dict)
    }

    /// The f64 oracle's outputs on `inputs` (`o`, each `o_<b>` as float64, each `idx_<b>` as
    /// int32): the definition every kernel is tested against.
    #[pyo3(signature = (inputs, cu_seqlens))]
    fn reference_forward<'py>(
        &self,
        py: Python<'py>,
        inputs: &Bound<'py, PyDict>,
        cu_seqlens: Option<Vec<usize>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let borrowed = Borrowed::of(inputs)?;
        let shape = self.shape(borrowed.shape("q"), cu_seqlens)?;
        let owned = borrowed.owned()?;
        let run = py
            .detach(|| self.reference.run_shape(&shape, &owned))
            .map_err(to_py)?;
        let dict = PyDict::new(py);
        for (name, t) in run.outputs {
            dict.set_item(name, host_to_numpy(py, t)?)?;
        }
        Ok(dict)
    }

    /// The f64 oracle's gradients (`d<input>` → float64 array) for the upstream gradient `d_o`.
    #[pyo3(signature = (inputs, cu_seqlens, d_o))]
    fn reference_backward<'py>(
        &self,
        py: Python<'py>,
        inputs: &Bound<'py, PyDict>,
        cu_seqlens: Option<Vec<usize>>,
        d_o: PyReadonlyArrayDyn<'py, f32>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let borrowed = Borrowed::of(inputs)?;
        let shape = self.shape(borrowed.shape("q"), cu_seqlens)?;
        let owned = borrowed.owned()?;
        let r = tensor_ref("do", &d_o)?;
        let d_o = Tensor {
            shape: r.shape.to_vec(),
            data: r.data.to_vec(),
        };
        let grads = py
            .detach(|| {
                let (_, state) = self.reference.forward_train(&shape, &owned)?;
                self.reference.backward(&shape, &owned, &state, &d_o)
            })
            .map_err(to_py)?;
        let dict = PyDict::new(py);
        for (name, t) in grads.gradients {
            dict.set_item(name, host_to_numpy(py, t)?)?;
        }
        Ok(dict)
    }
}
