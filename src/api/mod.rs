//! The library entry: load a spec ([`Attention`]), compile it for a device ([`Attention::compile`],
//! taking the tuned Variant when the tuning database has one), and call it on tensors
//! ([`Compiled::run`]), or train with it ([`Compiled::forward_train`], then
//! [`Compiled::backward`]). The CLI is a client of this module; so can any Rust program be.

pub mod choice;
mod compiled;
mod error;

pub use choice::VariantOrigin;
pub use compiled::{Compiled, Device, GradRun, NO_GPU_BACKWARD, Options, Run, TrainState};
pub use error::Error;

use std::path::Path;

use nsac_compiler::ir::{Plan, Signature};
use nsac_dsl::Spec;
use nsac_dsl::problem::Problem;
use nsac_kernels::io::Inputs;

/// A checked spec: what to compute, independent of any device or problem size.
#[derive(Debug, Clone, PartialEq)]
pub struct Attention {
    spec: Spec,
}

impl Attention {
    /// Loads a `.nsa` or `.yaml` spec file; diagnostics come back as [`Error::Spec`] (render
    /// them with [`Error::render`]).
    pub fn load(path: impl AsRef<Path>) -> Result<Attention, Error> {
        Ok(Attention {
            spec: nsac_dsl::load(path.as_ref())?,
        })
    }

    /// Parses spec text: the `.nsa` language, or YAML when the text is a YAML mapping
    /// (starts with `name:` or `---`).
    ///
    /// ```
    /// let attn = nsac::Attention::parse(
    ///     "attention tiny {\n heads = 4/2\n head_dim = 16\n window w { size = 8 }\n combine = sum(w)\n}",
    /// )?;
    /// assert_eq!(attn.spec().heads.group(), 2);
    /// assert!(nsac::Attention::parse("attention broken {").is_err());
    /// # Ok::<(), nsac::Error>(())
    /// ```
    pub fn parse(text: &str) -> Result<Attention, Error> {
        let trimmed = text.trim_start();
        let yaml = trimmed.starts_with("---") || trimmed.starts_with("name:");
        let spec = if yaml {
            nsac_dsl::parse_yaml(text)
        } else {
            nsac_dsl::parse_text(text)
        };
        spec.map(|spec| Attention { spec })
            .map_err(|e| Error::Parse(e.to_string()))
    }

    /// Wraps an already validated spec.
    pub fn from_spec(spec: Spec) -> Attention {
        Attention { spec }
    }

    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// The verified forward Plan for `problem`'s heads, head dims and dtype (its lengths do not
    /// change the plan).
    ///
    /// ```
    /// use nsac::{Attention, Problem};
    /// let attn = Attention::load("kernels/nsa-paper.nsa")?;
    /// let short = attn.plan(&Problem::batched(1, 100))?;
    /// let long = attn.plan(&Problem::varlen(vec![0, 5000, 70000]))?;
    /// assert_eq!(short, long);
    /// assert!(short.text().contains("topk slc k=16"));
    /// # Ok::<(), nsac::Error>(())
    /// ```
    pub fn plan(&self, problem: &Problem) -> Result<Plan, Error> {
        let shape = problem.resolve(&self.spec)?;
        Ok(Plan::forward(&self.spec, &Signature::of(&shape))?)
    }

    /// The verified training pair (forward saving its log-sum-exps, then backward) for
    /// `problem`'s heads, head dims and dtype (`nsac compile --emit plan --backward`).
    pub fn backward_plan(&self, problem: &Problem) -> Result<Plan, Error> {
        let shape = problem.resolve(&self.spec)?;
        Ok(Plan::backward(&self.spec, &Signature::of(&shape))?)
    }

    /// Random inputs for `problem` from `seed` (standard-normal activations, uniform (0, 1)
    /// gates, pool weights scaled by 1/√fan-in), reproducible on every platform.
    pub fn random_inputs(&self, problem: &Problem, seed: u64) -> Result<Inputs, Error> {
        let shape = problem.resolve(&self.spec)?;
        Ok(nsac_kernels::io::random_inputs(&self.spec, &shape, seed))
    }

    /// Prepares the spec for `device`; see [`Compiled`] for what is compiled when.
    pub fn compile(&self, device: &Device, options: &Options) -> Result<Compiled, Error> {
        Compiled::new(self.spec.clone(), device, options)
    }
}
