//! AdamW with decoupled weight decay on some parameters only, the
//! learning-rate schedule, and gradient clipping.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use rayon::prelude::*;
use std::collections::HashMap;

use crate::error::TrainError;

/// AdamW's settings (open_clip's defaults for training from scratch).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to the root of the second moment.
    pub eps: f64,
    /// Decoupled weight decay, applied to the decayed group only.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-6,
            weight_decay: 0.2,
        }
    }
}

/// Whether a parameter gets weight decay — open_clip's rule: not when it has
/// fewer than two dimensions (biases, LayerNorm gains, the class embedding,
/// the temperature) or its name says it is a bias, a norm or the temperature.
pub fn decays(name: &str, rank: usize) -> bool {
    let excluded = rank < 2
        || name.contains("bias")
        || name.contains("logit_scale")
        || name.contains("layer_norm")
        || name.contains("layernorm")
        || name.contains("layrnorm")
        || name
            .split('.')
            .any(|part| part.starts_with("ln") || part.starts_with("bn"));
    !excluded
}

/// One parameter and its moments.
struct Slot {
    name: String,
    var: Var,
    decay: bool,
    m: Vec<f32>,
    v: Vec<f32>,
}

/// AdamW over named variables, in two groups (decayed or not, per
/// [`decays`]). The update is PyTorch's `torch.optim.AdamW`: decay
/// `p -= lr·wd·p`, then `p -= lr · m̂ / (√v̂ + eps)` with bias-corrected
/// moments. Runs on plain slices, the same every time (deterministic).
pub struct AdamW {
    config: AdamWConfig,
    slots: Vec<Slot>,
    step: u64,
}

impl std::fmt::Debug for AdamW {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdamW")
            .field("config", &self.config)
            .field("parameters", &self.slots.len())
            .field("step", &self.step)
            .finish()
    }
}

impl AdamW {
    /// An optimiser with zero moments for `params` (name, variable).
    pub fn new(params: &[(String, Var)], config: AdamWConfig) -> Self {
        let slots = params
            .iter()
            .map(|(name, var)| Slot {
                name: name.clone(),
                var: var.clone(),
                decay: decays(name, var.rank()),
                m: vec![0.0; var.elem_count()],
                v: vec![0.0; var.elem_count()],
            })
            .collect();
        Self {
            config,
            slots,
            step: 0,
        }
    }

    /// Names of the parameters in the decayed and in the undecayed group.
    pub fn groups(&self) -> (Vec<&str>, Vec<&str>) {
        let (d, n): (Vec<_>, Vec<_>) = self.slots.iter().partition(|s| s.decay);
        (
            d.iter().map(|s| s.name.as_str()).collect(),
            n.iter().map(|s| s.name.as_str()).collect(),
        )
    }

    /// Updates done so far.
    pub fn steps_done(&self) -> u64 {
        self.step
    }

    /// One update at learning rate `lr`. A parameter with no gradient (it
    /// took no part in the loss) is left alone, moments included.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<(), TrainError> {
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let (bc1, bc2) = (1.0 - c.beta1.powi(t), 1.0 - c.beta2.powi(t));
        let step_size = (lr / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        let (b1, b2, eps) = (c.beta1 as f32, c.beta2 as f32, c.eps as f32);
        for slot in &mut self.slots {
            let Some(g) = grads.get(slot.var.as_tensor()) else {
                continue;
            };
            let g = g
                .contiguous()
                .map_err(TrainError::internal("reading a gradient"))?;
            let update = AdamWUpdate {
                moments: std::cell::RefCell::new((&mut slot.m, &mut slot.v)),
                decay: if slot.decay {
                    1.0 - (lr * c.weight_decay) as f32
                } else {
                    1.0
                },
                b1,
                b2,
                eps,
                step_size,
                bc2_sqrt,
            };
            // In place: the parameter is not copied out and back, nor the
            // gradient out (three passes over memory fewer per step).
            slot.var
                .as_tensor()
                .inplace_op2(&g, &update)
                .map_err(TrainError::internal("updating a parameter"))?;
        }
        Ok(())
    }

    /// The moments as tensors (`m.NAME`, `v.NAME`) plus the step count, for
    /// a checkpoint.
    pub fn state(&self) -> Result<HashMap<String, Tensor>, TrainError> {
        let mut out = HashMap::new();
        for s in &self.slots {
            let shape = s.var.shape().clone();
            let dev = s.var.device();
            let m = Tensor::from_slice(&s.m, shape.clone(), dev);
            let v = Tensor::from_slice(&s.v, shape, dev);
            out.insert(
                format!("m.{}", s.name),
                m.map_err(TrainError::internal("saving moments"))?,
            );
            out.insert(
                format!("v.{}", s.name),
                v.map_err(TrainError::internal("saving moments"))?,
            );
        }
        let step = Tensor::new(&[self.step as f64], &candle_core::Device::Cpu)
            .map_err(TrainError::internal("saving moments"))?;
        out.insert("step".into(), step);
        Ok(out)
    }

    /// Restores [`AdamW::state`]; every parameter must be there with its shape.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<(), String> {
        for s in &mut self.slots {
            for (prefix, target) in [("m", &mut s.m), ("v", &mut s.v)] {
                let key = format!("{prefix}.{}", s.name);
                let t = state
                    .get(&key)
                    .ok_or_else(|| format!("no optimiser state for '{}'", s.name))?;
                if t.elem_count() != target.len() {
                    return Err(format!(
                        "optimiser state for '{}' has the wrong size",
                        s.name
                    ));
                }
                *target = t
                    .flatten_all()
                    .and_then(|t| t.to_vec1())
                    .map_err(|e| e.to_string())?;
            }
        }
        let step = state
            .get("step")
            .and_then(|t| t.to_vec1::<f64>().ok())
            .and_then(|v| v.first().copied())
            .ok_or("no step count in the optimiser state")?;
        self.step = step as u64;
        Ok(())
    }
}

/// Linear warm-up to `base` over `warmup` steps, then cosine decay to zero
/// at `total` (open_clip's `cosine_lr`; `step` counts from 0).
pub fn cosine_lr(step: usize, base: f64, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    let e = (step - warmup) as f64;
    let es = total.saturating_sub(warmup).max(1) as f64;
    0.5 * (1.0 + (std::f64::consts::PI * e / es).cos()) * base
}

/// Scales every gradient so that their global L2 norm is at most
/// `max_norm`; returns the norm before scaling.
pub fn clip_grad_norm(
    grads: &mut GradStore,
    params: &[(String, Var)],
    max_norm: Option<f64>,
) -> Result<f64, TrainError> {
    let mut total = 0f64;
    for (_, var) in params {
        if let Some(g) = grads.get(var.as_tensor()) {
            let s = g
                .sqr()
                .and_then(|s| s.sum_all())
                .and_then(|s| s.to_scalar::<f32>())
                .map_err(TrainError::internal("clipping gradients"))?;
            total += f64::from(s);
        }
    }
    let norm = total.sqrt();
    if let Some(max) = max_norm {
        if norm > max && norm.is_finite() {
            let scale = max / (norm + 1e-6);
            for (_, var) in params {
                if let Some(g) = grads.get(var.as_tensor()) {
                    let scaled = (g * scale).map_err(TrainError::internal("clipping gradients"))?;
                    grads.insert(var.as_tensor(), scaled);
                }
            }
        }
    }
    Ok(norm)
}

/// One AdamW update of a parameter's storage, in place, with its gradient
/// (PyTorch's formula, see [`AdamW`]); element-wise, so splitting it across
/// threads changes no result.
struct AdamWUpdate<'a> {
    moments: std::cell::RefCell<(&'a mut Vec<f32>, &'a mut Vec<f32>)>,
    decay: f32,
    b1: f32,
    b2: f32,
    eps: f32,
    step_size: f32,
    bc2_sqrt: f32,
}

impl candle_core::InplaceOp2 for AdamWUpdate<'_> {
    fn name(&self) -> &'static str {
        "adamw-update"
    }

    fn cpu_fwd(
        &self,
        param: &mut candle_core::CpuStorage,
        param_layout: &candle_core::Layout,
        grad: &candle_core::CpuStorage,
        grad_layout: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        use candle_core::CpuStorage;
        let (CpuStorage::F32(p), CpuStorage::F32(g)) = (param, grad) else {
            candle_core::bail!("AdamW updates f32 parameters")
        };
        let (Some((p0, p1)), Some((g0, g1))) = (
            param_layout.contiguous_offsets(),
            grad_layout.contiguous_offsets(),
        ) else {
            candle_core::bail!("AdamW takes contiguous parameters and gradients")
        };
        let (p, g) = (&mut p[p0..p1], &g[g0..g1]);
        let mut moments = self.moments.borrow_mut();
        let (m, v) = &mut *moments;
        if g.len() != p.len() || m.len() != p.len() || v.len() != p.len() {
            candle_core::bail!("AdamW: parameter, gradient and moments differ in size")
        }
        let (decay, b1, b2, eps) = (self.decay, self.b1, self.b2, self.eps);
        let (step_size, bc2_sqrt) = (self.step_size, self.bc2_sqrt);
        const CHUNK: usize = 1 << 15;
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .for_each(|(((p, g), m), v)| {
                for (((p, g), m), v) in p.iter_mut().zip(g).zip(m).zip(v) {
                    *p *= decay;
                    *m = b1 * *m + (1.0 - b1) * g;
                    *v = b2 * *v + (1.0 - b2) * g * g;
                    *p -= step_size * *m / (v.sqrt() / bc2_sqrt + eps);
                }
            });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn decay_groups_follow_open_clip() {
        assert!(decays("text_model.encoder.layers.0.mlp.fc1.weight", 2));
        assert!(decays("text_model.embeddings.token_embedding.weight", 2));
        assert!(!decays("text_model.encoder.layers.0.mlp.fc1.bias", 1));
        assert!(!decays("text_model.final_layer_norm.weight", 1));
        assert!(!decays("vision_model.embeddings.class_embedding", 1));
        assert!(!decays("logit_scale", 0));
        assert!(!decays("visual.ln_post.weight", 2));
    }

    #[test]
    fn matches_pytorch_adamw_by_hand() {
        // One weight, two steps, against the PyTorch formula written out.
        let w = Var::new(&[[1.0f32, -2.0]], &Device::Cpu).unwrap();
        let b = Var::new(&[0.5f32], &Device::Cpu).unwrap();
        let params = vec![
            ("w".to_string(), w.clone()),
            ("b.bias".to_string(), b.clone()),
        ];
        let cfg = AdamWConfig::default();
        let mut opt = AdamW::new(&params, cfg);
        let (lr, wd, b1, b2, eps) = (0.1f64, cfg.weight_decay, cfg.beta1, cfg.beta2, cfg.eps);
        let mut expect = [1.0f64, -2.0];
        let (mut m, mut v) = ([0f64; 2], [0f64; 2]);
        for t in 1..=2 {
            // loss = sum(w^2) + 3 b: grad 2w and 3.
            let loss = (w.as_tensor().sqr().unwrap().sum_all().unwrap()
                + (b.as_tensor() * 3.0).unwrap().sum_all().unwrap())
            .unwrap();
            let grads = loss.backward().unwrap();
            for i in 0..2 {
                let g = 2.0 * expect[i];
                expect[i] *= 1.0 - lr * wd;
                m[i] = b1 * m[i] + (1.0 - b1) * g;
                v[i] = b2 * v[i] + (1.0 - b2) * g * g;
                let mh = m[i] / (1.0 - b1.powi(t));
                let vh = v[i] / (1.0 - b2.powi(t));
                expect[i] -= lr * mh / (vh.sqrt() + eps);
            }
            opt.step(&grads, lr).unwrap();
        }
        let got = w.as_tensor().to_vec2::<f32>().unwrap()[0].clone();
        for i in 0..2 {
            assert!(
                (f64::from(got[i]) - expect[i]).abs() < 1e-5,
                "{got:?} vs {expect:?}"
            );
        }
        // The bias is not decayed: after two steps of gradient 3 it moved by
        // about 2 lr, no more.
        let bias = b.as_tensor().to_vec1::<f32>().unwrap()[0];
        assert!((bias - (0.5 - 0.2)).abs() < 1e-3, "{bias}");
        // State round-trips.
        let state = opt.state().unwrap();
        let mut again = AdamW::new(&params, cfg);
        again.load_state(&state).unwrap();
        assert_eq!(again.steps_done(), 2);
        assert_eq!(again.slots[0].m, opt.slots[0].m);
    }

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        assert!((cosine_lr(0, 1.0, 10, 100) - 0.1).abs() < 1e-12);
        assert!((cosine_lr(9, 1.0, 10, 100) - 1.0).abs() < 1e-12);
        assert!((cosine_lr(10, 1.0, 10, 100) - 1.0).abs() < 1e-12);
        assert!((cosine_lr(55, 1.0, 10, 100) - 0.5).abs() < 1e-12);
        assert!(cosine_lr(99, 1.0, 10, 100) < 0.001);
        assert!((cosine_lr(0, 1.0, 0, 10) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let w = Var::new(&[3.0f32, 4.0], &Device::Cpu).unwrap();
        let params = vec![("w".to_string(), w.clone())];
        let loss = (w.as_tensor().sqr().unwrap().sum_all().unwrap() * 0.5).unwrap();
        let mut grads = loss.backward().unwrap();
        let norm = clip_grad_norm(&mut grads, &params, Some(1.0)).unwrap();
        assert!((norm - 5.0).abs() < 1e-5);
        let g = grads.get(w.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        assert!(((g[0] * g[0] + g[1] * g[1]).sqrt() - 1.0).abs() < 1e-4);
    }
}
