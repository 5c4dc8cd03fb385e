//! The text tower: token + position embeddings, a causal transformer, final
//! LayerNorm, pooled at the end-of-text token.

use candle_core::{Device, Module, Result, Tensor, D};
use candle_nn::{Init, VarBuilder};

use crate::config::TextConfig;
use crate::layers::{Encoder, EncoderShape, FusedRows, LayerNorm, Packing};
use crate::precision::Precision;

/// Outputs of the text tower for a batch of token sequences.
#[derive(Debug)]
pub struct TextOutput {
    /// `[batch, seq, dim]` after the final LayerNorm (HF `last_hidden_state`).
    pub last_hidden_state: Tensor,
    /// `[batch, dim]`: `last_hidden_state` at each sequence's first EOT token.
    pub pooled: Tensor,
    /// With `keep_hidden`: the embeddings and each block's output (HF `hidden_states`).
    pub hidden_states: Vec<Tensor>,
}

/// `text_model.*` of an HF `CLIPModel`.
#[derive(Clone, Debug)]
pub struct TextTransformer {
    token_embedding: Tensor,
    position_embedding: Tensor,
    encoder: Encoder,
    final_layer_norm: LayerNorm,
    eos_token_id: u32,
    vocab_size: usize,
    context_length: usize,
}

impl TextTransformer {
    /// Loads the tower under `vb` (`text_model`).
    pub fn new(cfg: &TextConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let emb = vb.pp("embeddings");
        let token_embedding = emb.pp("token_embedding").get_with_hints(
            (cfg.vocab_size, d),
            "weight",
            Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
        )?;
        let position_embedding = emb.pp("position_embedding").get_with_hints(
            (cfg.max_position_embeddings, d),
            "weight",
            Init::Randn {
                mean: 0.0,
                stdev: 0.01,
            },
        )?;
        let shape = EncoderShape {
            dim: d,
            inner: cfg.intermediate_size,
            heads: cfg.num_attention_heads,
            layers: cfg.num_hidden_layers,
            act: cfg.hidden_act,
            eps: cfg.layer_norm_eps,
        };
        Ok(Self {
            token_embedding,
            position_embedding,
            encoder: Encoder::new(&shape, vb.pp("encoder"))?,
            final_layer_norm: LayerNorm::new(d, cfg.layer_norm_eps, vb.pp("final_layer_norm"))?,
            eos_token_id: cfg.eos_token_id,
            vocab_size: cfg.vocab_size,
            context_length: cfg.max_position_embeddings,
        })
    }

    /// Keeps reduced-precision copies of the encoder's weights for queries
    /// (see [`crate::Precision`]); returns their bytes.
    pub fn set_query_precision(&mut self, precision: Precision) -> Result<usize> {
        self.encoder.set_query_precision(precision, FusedRows::Any)
    }

    /// Whether the tower is being trained (its head's weights are
    /// variables; locking keeps the head for last, so any unlocked part
    /// implies it).
    pub fn is_trainable(&self) -> bool {
        self.final_layer_norm.is_variable()
    }

    /// The longest sequence the tower takes (77 for CLIP).
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// Where each sequence is pooled: its first end-of-text token (HF's
    /// legacy `eos_token_id == 2` means the largest id, which is the same
    /// position for CLIP's vocabulary).
    pub fn eot_positions(&self, ids: &[Vec<u32>]) -> std::result::Result<Vec<usize>, String> {
        ids.iter()
            .enumerate()
            .map(|(i, seq)| {
                let pos = if self.eos_token_id == 2 {
                    seq.iter()
                        .enumerate()
                        .fold(None, |best: Option<(usize, u32)>, (p, &t)| match best {
                            Some((_, bt)) if bt >= t => best,
                            _ => Some((p, t)),
                        })
                        .map(|(p, _)| p)
                } else {
                    seq.iter().position(|&t| t == self.eos_token_id)
                };
                pos.ok_or_else(|| {
                    format!(
                        "token sequence {i} has no end-of-text token ({})",
                        self.eos_token_id
                    )
                })
            })
            .collect()
    }

    /// Runs the tower on `ids` (`[batch, seq]`, seq ≤ context length, all rows
    /// the same length), pooling at `eot` (one position per row).
    /// `attention_mask` (`[batch, seq]`, 1 = token, 0 = padding) hides
    /// padding keys as HF does; it changes only positions after the EOT token,
    /// never the pooled output.
    pub fn forward(
        &self,
        ids: &Tensor,
        eot: &[usize],
        attention_mask: Option<&Tensor>,
        keep_hidden: bool,
    ) -> Result<TextOutput> {
        let (b, n) = ids.dims2()?;
        if n > self.context_length {
            candle_core::bail!(
                "{n} tokens is longer than the context length {}",
                self.context_length
            )
        }
        let x = self
            .token_embedding
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, n, ()))?;
        let x = crate::autograd::add_positions(&x, &self.position_embedding.narrow(0, 0, n)?)?;
        let mask = match attention_mask {
            None => causal_mask(n, ids.device())?,
            Some(m) => padded_causal_mask(
                &m.to_dtype(candle_core::DType::U32)?.to_vec2::<u32>()?,
                ids.device(),
            )?,
        };
        let (x, hidden_states) = self.encoder.forward(&x, Some(&mask), keep_hidden)?;
        let last = self.final_layer_norm.forward(&x)?;
        let rows: Vec<u32> = eot
            .iter()
            .enumerate()
            .map(|(i, &p)| (i * n + p) as u32)
            .collect();
        let rows = Tensor::new(rows, ids.device())?;
        let pooled = last.reshape((b * n, ()))?.index_select(&rows, 0)?;
        Ok(TextOutput {
            last_hidden_state: last,
            pooled,
            hidden_states,
        })
    }

    /// The pooled (final-LayerNorm) output at `eot` for sequences of any
    /// lengths, computing only the tokens up to each sequence's own EOT
    /// (see [`Packing`]): the training path, where a batch's captions
    /// are on average about half as long as its longest. Equal to
    /// [`TextTransformer::forward`]'s `pooled`.
    pub fn pooled_packed(&self, ids: &[Vec<u32>], eot: &[usize]) -> Result<Tensor> {
        let device = self.token_embedding.device();
        let n = eot.iter().map(|p| p + 1).max().unwrap_or(1);
        if n > self.context_length {
            candle_core::bail!(
                "{n} tokens is longer than the context length {}",
                self.context_length
            )
        }
        let packing = Packing::new(eot, n, device)?;
        let mut tokens = Vec::with_capacity(packing.rows());
        let mut positions = Vec::with_capacity(packing.rows());
        let mut pooled_rows = Vec::with_capacity(ids.len());
        for (seq, &last) in ids.iter().zip(eot) {
            for (p, &id) in seq.iter().take(last + 1).enumerate() {
                tokens.push(id);
                positions.push(p as u32);
            }
            pooled_rows.push((tokens.len() - 1) as u32);
        }
        let rows = tokens.len();
        let tokens = Tensor::from_vec(tokens, rows, device)?;
        let positions = Tensor::from_vec(positions, rows, device)?;
        let x = (self.token_embedding.index_select(&tokens, 0)?
            + self.position_embedding.index_select(&positions, 0)?)?;
        let mask = causal_mask(n, device)?;
        let x = self.encoder.forward_packed(&x, &packing, &mask)?;
        let pooled_rows = Tensor::from_vec(pooled_rows, ids.len(), device)?;
        self.final_layer_norm
            .forward(&x.index_select(&pooled_rows, 0)?)
    }

    /// Checks ids before they reach `index_select` (which would fail obscurely).
    pub fn check_ids(&self, ids: &[Vec<u32>]) -> std::result::Result<(), String> {
        for seq in ids {
            if seq.len() > self.context_length {
                return Err(format!(
                    "{} tokens is longer than the model's context length {}",
                    seq.len(),
                    self.context_length
                ));
            }
            if let Some(t) = seq.iter().find(|&&t| t as usize >= self.vocab_size) {
                return Err(format!(
                    "token id {t} is outside the vocabulary ({})",
                    self.vocab_size
                ));
            }
        }
        Ok(())
    }
}

/// `[n, n]` additive mask: 0 on and below the diagonal, -inf above.
pub(crate) fn causal_mask(n: usize, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..n)
        .flat_map(|i| (0..n).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (n, n), device)
}

/// `[batch, 1, n, n]` additive mask: causal, and padding keys hidden.
fn padded_causal_mask(keep: &[Vec<u32>], device: &Device) -> Result<Tensor> {
    let b = keep.len();
    let n = keep.first().map_or(0, Vec::len);
    let mut mask = Vec::with_capacity(b * n * n);
    for row in keep {
        if row.len() != n || row.first() != Some(&1) {
            candle_core::bail!("attention mask rows must all have length {n} and start with 1")
        }
        for i in 0..n {
            mask.extend((0..n).map(|j| {
                if j > i || row[j] == 0 {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            }));
        }
    }
    Tensor::from_vec(mask, (b, 1, n, n), device)
}

/// Scales each row of `[batch, dim]` to unit L2 norm.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    x.broadcast_div(&x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?)
}
