//! The model being trained: which tensors are variables (trainable) and
//! which are locked, how fresh weights are initialised (seeded, as
//! open_clip does), and the weights as plain tensors for saving.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::{Init, VarBuilder, VarMap};
use glimpse_clip::{ClipConfig, ClipModel};
use rand::SeedableRng;
use rand_distr::{Distribution, Normal, Uniform};

use crate::error::TrainError;

/// Which parts of the model are locked (LiT-style: kept as loaded, given no
/// gradient, never updated).
///
/// Each tower is seen as open_clip sees it, as groups: the embeddings (with
/// the vision tower's pre-LayerNorm), each transformer block, and the head
/// (final LayerNorm and projection). A locked tower may leave its last `n`
/// groups unlocked: `1` trains only the head, `2` also the last block.
/// The temperature is always trained.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Locking {
    /// Lock the image tower, leaving this many of its last groups unlocked.
    pub image: Option<usize>,
    /// Lock the text tower, leaving this many of its last groups unlocked.
    pub text: Option<usize>,
}

impl Locking {
    /// Whether the tensor called `name` (HF naming) is trained.
    pub fn is_trainable(&self, name: &str, cfg: &ClipConfig) -> bool {
        let (lock, groups, group) =
            if name.starts_with("vision_model.") || name.starts_with("visual_projection") {
                let layers = cfg.vision_config.num_hidden_layers;
                (
                    self.image,
                    layers + 2,
                    group_of(name, "vision_model", "visual_projection", layers),
                )
            } else if name.starts_with("text_model.") || name.starts_with("text_projection") {
                let layers = cfg.text_config.num_hidden_layers;
                (
                    self.text,
                    layers + 2,
                    group_of(name, "text_model", "text_projection", layers),
                )
            } else {
                return true;
            };
        match lock {
            None => true,
            Some(unlocked) => group + unlocked.min(groups) >= groups,
        }
    }
}

/// The group index of a tensor within its tower: 0 embeddings, `1..=layers`
/// blocks, `layers + 1` head.
fn group_of(name: &str, tower: &str, projection: &str, layers: usize) -> usize {
    if name.starts_with(projection) {
        return layers + 1;
    }
    let rest = name
        .strip_prefix(tower)
        .unwrap_or(name)
        .trim_start_matches('.');
    if let Some(layer) = rest.strip_prefix("encoder.layers.") {
        let index = layer
            .split('.')
            .next()
            .and_then(|i| i.parse::<usize>().ok());
        return index.map_or(0, |i| i + 1);
    }
    if rest.starts_with("final_layer_norm") || rest.starts_with("post_layernorm") {
        return layers + 1;
    }
    0
}

/// A CLIP whose trainable tensors are variables.
pub struct TrainableModel {
    model: ClipModel,
    config: ClipConfig,
    /// Trainable tensors, sorted by name.
    trainable: Vec<(String, Var)>,
    /// Locked tensors, sorted by name.
    locked: Vec<(String, Tensor)>,
}

impl std::fmt::Debug for TrainableModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainableModel")
            .field("trainable", &self.trainable.len())
            .field("locked", &self.locked.len())
            .finish_non_exhaustive()
    }
}

impl TrainableModel {
    /// Builds the model: tensors in `initial` (a checkpoint's weights, HF
    /// names) are used as they are; any other is initialised from `seed`
    /// (open_clip's rules, the same values on every machine).
    pub fn new(
        config: &ClipConfig,
        initial: Option<HashMap<String, Tensor>>,
        locking: Locking,
        seed: u64,
    ) -> Result<Self, TrainError> {
        let backend = SeededBackend {
            initial: initial.unwrap_or_default(),
            seed,
            config: config.clone(),
            locking,
            varmap: VarMap::new(),
            locked: Arc::new(Mutex::new(HashMap::new())),
        };
        let varmap = backend.varmap.clone();
        let locked = backend.locked.clone();
        let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, Device::Cpu);
        let model =
            ClipModel::new(config, vb).map_err(TrainError::internal("building the model"))?;
        let mut trainable: Vec<(String, Var)> = varmap
            .data()
            .lock()
            .map_err(|_| poisoned())?
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        trainable.sort_by(|a, b| a.0.cmp(&b.0));
        let mut locked: Vec<(String, Tensor)> = locked
            .lock()
            .map_err(|_| poisoned())?
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        locked.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Self {
            model,
            config: config.clone(),
            trainable,
            locked,
        })
    }

    /// The model (its trainable tensors are the variables).
    pub fn model(&self) -> &ClipModel {
        &self.model
    }

    /// Its configuration.
    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// Trainable tensors by name, sorted.
    pub fn trainable(&self) -> &[(String, Var)] {
        &self.trainable
    }

    /// Locked tensors by name, sorted.
    pub fn locked(&self) -> &[(String, Tensor)] {
        &self.locked
    }

    /// Number of trainable and of locked parameters.
    pub fn parameter_counts(&self) -> (usize, usize) {
        (
            self.trainable.iter().map(|(_, v)| v.elem_count()).sum(),
            self.locked.iter().map(|(_, t)| t.elem_count()).sum(),
        )
    }

    /// Every weight, detached, by HF name: what is saved and what an
    /// inference copy is built from.
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.trainable
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .chain(self.locked.iter().map(|(k, t)| (k.clone(), t.clone())))
            .collect()
    }

    /// An inference copy of the current weights (no autograd graph, the
    /// fast paths of the inference code).
    pub fn inference_model(&self) -> Result<ClipModel, TrainError> {
        let vb = VarBuilder::from_tensors(self.tensors(), DType::F32, &Device::Cpu);
        ClipModel::new(&self.config, vb).map_err(TrainError::internal("copying the model"))
    }
}

fn poisoned() -> TrainError {
    TrainError::Internal {
        what: "building the model",
        message: "a lock was poisoned".into(),
    }
}

/// A `VarBuilder` backend that takes tensors from a checkpoint or makes
/// them from a seed, and makes each either a variable or a locked tensor.
struct SeededBackend {
    initial: HashMap<String, Tensor>,
    seed: u64,
    config: ClipConfig,
    locking: Locking,
    varmap: VarMap,
    locked: Arc<Mutex<HashMap<String, Tensor>>>,
}

impl candle_nn::var_builder::SimpleBackend for SeededBackend {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        init: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let value = match self.initial.get(name) {
            Some(t) => {
                if t.shape() != &shape {
                    candle_core::bail!(
                        "tensor '{name}' has shape {:?}, the model needs {:?}",
                        t.dims(),
                        shape.dims()
                    )
                }
                t.to_dtype(dtype)?.to_device(dev)?
            }
            None => {
                let init = open_clip_init(name, shape.dims(), &self.config).unwrap_or(init);
                seeded(&shape, name, init, self.seed, dev)?.to_dtype(dtype)?
            }
        };
        if self.locking.is_trainable(name, &self.config) {
            let var = Var::from_tensor(&value)?;
            let mut data = self
                .varmap
                .data()
                .lock()
                .map_err(|_| candle_core::Error::msg("poisoned"))?;
            data.insert(name.to_string(), var.clone());
            Ok(var.as_tensor().clone())
        } else {
            let mut locked = self
                .locked
                .lock()
                .map_err(|_| candle_core::Error::msg("poisoned"))?;
            locked.insert(name.to_string(), value.clone());
            Ok(value)
        }
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        match self.initial.get(name) {
            Some(t) => t.to_dtype(dtype)?.to_device(dev),
            None => candle_core::bail!("no tensor '{name}' and no shape to make one"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.initial.contains_key(name)
    }
}

/// open_clip's initialisation where it differs from the layer defaults:
/// text blocks get `width^-0.5` attention inputs, `width^-0.5 (2L)^-0.5`
/// output projections and `(2 width)^-0.5` MLP inputs; the vision tower
/// keeps PyTorch's defaults (`nn.Linear`: uniform ±`fan_in^-0.5` for
/// weight and bias; attention: Xavier-uniform inputs, zero biases).
fn open_clip_init(name: &str, dims: &[usize], cfg: &ClipConfig) -> Option<Init> {
    let normal = |stdev: f64| Init::Randn { mean: 0.0, stdev };
    let uniform = |bound: f64| Init::Uniform {
        lo: -bound,
        up: bound,
    };
    if let Some(rest) = name.strip_prefix("text_model.encoder.layers.") {
        let w = cfg.text_config.hidden_size as f64;
        let proj_std = w.powf(-0.5) * (2.0 * cfg.text_config.num_hidden_layers as f64).powf(-0.5);
        return match rest.split_once('.').map(|(_, r)| r)? {
            "self_attn.q_proj.weight" | "self_attn.k_proj.weight" | "self_attn.v_proj.weight" => {
                Some(normal(w.powf(-0.5)))
            }
            "self_attn.out_proj.weight" | "mlp.fc2.weight" => Some(normal(proj_std)),
            "mlp.fc1.weight" => Some(normal((2.0 * w).powf(-0.5))),
            "mlp.fc1.bias" => Some(uniform(w.powf(-0.5))),
            "mlp.fc2.bias" => Some(uniform(
                (cfg.text_config.intermediate_size as f64).powf(-0.5),
            )),
            _ => None,
        };
    }
    if let Some(rest) = name.strip_prefix("vision_model.encoder.layers.") {
        let w = cfg.vision_config.hidden_size as f64;
        return match rest.split_once('.').map(|(_, r)| r)? {
            "self_attn.q_proj.weight" | "self_attn.k_proj.weight" | "self_attn.v_proj.weight" => {
                Some(uniform((6.0 / (4.0 * w)).sqrt()))
            }
            "self_attn.out_proj.weight" | "mlp.fc1.weight" | "mlp.fc1.bias" => {
                Some(uniform(w.powf(-0.5)))
            }
            "mlp.fc2.weight" | "mlp.fc2.bias" => Some(uniform(
                (cfg.vision_config.intermediate_size as f64).powf(-0.5),
            )),
            _ => None,
        };
    }
    if name == "vision_model.embeddings.patch_embedding.weight" {
        let fan_in: usize = dims.iter().skip(1).product();
        return Some(uniform((fan_in as f64).powf(-0.5)));
    }
    None
}

/// Values for one tensor from `init`, drawn from a generator seeded by
/// `seed` and the tensor's name (so adding a tensor changes no other).
fn seeded(
    shape: &Shape,
    name: &str,
    init: Init,
    seed: u64,
    dev: &Device,
) -> candle_core::Result<Tensor> {
    let n = shape.elem_count();
    let mut key = blake3::Hasher::new();
    key.update(&seed.to_le_bytes());
    key.update(name.as_bytes());
    let mut rng = rand_chacha::ChaCha8Rng::from_seed(*key.finalize().as_bytes());
    let values: Vec<f32> = match init {
        Init::Const(c) => vec![c as f32; n],
        Init::Randn { mean, stdev } => {
            let d = Normal::new(mean, stdev).map_err(candle_core::Error::msg)?;
            (0..n).map(|_| d.sample(&mut rng) as f32).collect()
        }
        Init::Uniform { lo, up } => {
            let d = Uniform::new_inclusive(lo, up).map_err(candle_core::Error::msg)?;
            (0..n).map(|_| d.sample(&mut rng) as f32).collect()
        }
        Init::Kaiming { .. } => {
            candle_core::bail!("tensor '{name}': Kaiming initialisation is not supported here")
        }
    };
    Tensor::from_vec(values, shape.clone(), dev)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> ClipConfig {
        ClipConfig::from_hf_json(
            glimpse_config::architecture("tiny").unwrap().config_json,
            "tiny",
        )
        .unwrap()
    }

    #[test]
    fn the_same_seed_gives_the_same_weights() {
        let cfg = tiny();
        let a = TrainableModel::new(&cfg, None, Locking::default(), 7).unwrap();
        let b = TrainableModel::new(&cfg, None, Locking::default(), 7).unwrap();
        let c = TrainableModel::new(&cfg, None, Locking::default(), 8).unwrap();
        assert_eq!(a.trainable().len(), cfg.expected_tensors().len());
        assert!(a.locked().is_empty());
        let (ta, tb, tc) = (a.tensors(), b.tensors(), c.tensors());
        let name = "vision_model.encoder.layers.0.mlp.fc1.weight";
        let v =
            |m: &HashMap<String, Tensor>| m[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(v(&ta), v(&tb));
        assert_ne!(v(&ta), v(&tc));
        // LayerNorm gains start at one, the temperature at ln(1/0.07).
        let ln = ta["text_model.final_layer_norm.weight"]
            .to_vec1::<f32>()
            .unwrap();
        assert!(ln.iter().all(|&x| x == 1.0));
        let scale = ta["logit_scale"].to_scalar::<f32>().unwrap();
        assert!((scale - (1.0f32 / 0.07).ln()).abs() < 1e-4);
        // open_clip's text output projections are smaller than its inputs.
        let std = |n: &str| {
            let x = ta[n].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt()
        };
        let w = cfg.text_config.hidden_size as f32;
        let q = std("text_model.encoder.layers.0.self_attn.q_proj.weight");
        assert!((q - w.powf(-0.5)).abs() < 0.1 * w.powf(-0.5), "{q}");
        assert!(std("text_model.encoder.layers.0.mlp.fc2.weight") < q);
    }

    #[test]
    fn locking_follows_open_clips_groups() {
        let cfg = tiny();
        let all = Locking {
            image: Some(0),
            text: None,
        };
        assert!(!all.is_trainable("vision_model.encoder.layers.1.mlp.fc1.weight", &cfg));
        assert!(!all.is_trainable("visual_projection.weight", &cfg));
        assert!(all.is_trainable("text_model.encoder.layers.0.mlp.fc1.weight", &cfg));
        assert!(all.is_trainable("logit_scale", &cfg));
        let head = Locking {
            image: Some(1),
            text: Some(2),
        };
        assert!(head.is_trainable("visual_projection.weight", &cfg));
        assert!(head.is_trainable("vision_model.post_layernorm.bias", &cfg));
        assert!(!head.is_trainable("vision_model.encoder.layers.1.mlp.fc1.weight", &cfg));
        assert!(head.is_trainable("text_model.encoder.layers.1.mlp.fc1.weight", &cfg));
        assert!(!head.is_trainable("text_model.encoder.layers.0.mlp.fc1.weight", &cfg));
        assert!(!head.is_trainable("text_model.embeddings.token_embedding.weight", &cfg));
        let m = TrainableModel::new(&cfg, None, head, 0).unwrap();
        let (trainable, locked) = m.parameter_counts();
        assert!(trainable > 0 && locked > 0);
        assert_eq!(
            m.trainable().len() + m.locked().len(),
            cfg.expected_tensors().len()
        );
    }
}
