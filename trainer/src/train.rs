//! One training step after another: batches in a seeded order, the
//! augmentation, the contrastive loss (whole or in micro-batches), the
//! optimiser and the temperature clamp.

use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use glimpse_clip::l2_normalize;
use glimpse_config::PreprocessConfig;
use glimpse_tokenizer::Tokenizer;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::{Pair, SkipReport};
use crate::error::TrainError;
use crate::images::{CropAugment, ImageSet};
use crate::loss::{contrastive_loss, MAX_LOGIT_SCALE};
use crate::optim::{clip_grad_norm, cosine_lr, AdamW, AdamWConfig};
use crate::weights::{Locking, TrainableModel};

/// Everything that decides what a run computes. A run resumes only with
/// the same options (the checkpoint records them).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainOptions {
    /// Optimiser steps in the whole run (the schedule's length).
    pub steps: usize,
    /// Pairs per step (the contrastive batch: every image against every caption).
    pub batch_size: usize,
    /// Pairs per forward pass when the batch is split to save memory
    /// (the gradient is the same as the whole batch's); `None`: no split.
    pub micro_batch: Option<usize>,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warm-up steps before the cosine decay.
    pub warmup: usize,
    /// AdamW settings.
    pub adamw: AdamWConfig,
    /// Clip the global gradient norm to this (`None`: no clipping, open_clip's default).
    pub grad_clip_norm: Option<f64>,
    /// Seed of the initialisation, the data order and the augmentation.
    pub seed: u64,
    /// Random-resized-crop range.
    pub augment: CropAugmentOptions,
    /// Locked towers.
    pub locking: Locking,
}

/// [`CropAugment`] as saved in a run's options.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CropAugmentOptions {
    /// Smallest and largest share of the area a crop covers.
    pub scale: (f64, f64),
    /// Smallest and largest aspect ratio.
    pub ratio: (f64, f64),
}

impl Default for CropAugmentOptions {
    fn default() -> Self {
        let a = CropAugment::default();
        Self {
            scale: a.scale,
            ratio: a.ratio,
        }
    }
}

impl TrainOptions {
    /// open_clip's recipe for a small model from scratch: batch 64, lr 5e-4,
    /// 100 warm-up steps, AdamW (0.9, 0.98, 1e-6, decay 0.2), no clipping.
    pub fn from_scratch(steps: usize) -> Self {
        Self {
            steps,
            batch_size: 64,
            micro_batch: None,
            lr: 5e-4,
            warmup: 100,
            adamw: AdamWConfig::default(),
            grad_clip_norm: None,
            seed: 0,
            augment: CropAugmentOptions::default(),
            locking: Locking::default(),
        }
    }

    /// Checks the options can work.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: &str| Err(TrainError::BadOption(m.to_string()));
        if self.steps == 0 {
            return bad("--steps must be at least 1");
        }
        if self.batch_size < 2 {
            return bad("--batch-size must be at least 2 (a contrastive batch needs other pairs to contrast with)");
        }
        if self.micro_batch == Some(0) {
            return bad("--micro-batch must be at least 1");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("--lr must be a positive number");
        }
        let (lo, hi) = self.augment.scale;
        if !(0.0 < lo && lo <= hi && hi <= 1.0) {
            return bad("the crop scale range must satisfy 0 < min <= max <= 1");
        }
        Ok(())
    }
}

/// What one step did.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// Steps done, this one included.
    pub step: usize,
    /// The batch's contrastive loss before the update.
    pub loss: f32,
    /// The learning rate used.
    pub lr: f64,
    /// `exp(logit_scale)` after the update (the inverse temperature).
    pub scale: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Wall-clock seconds of the step (data included).
    pub seconds: f64,
}

/// Training pairs ready to batch: images decoded once at a little more than
/// the model's input size (crops are taken from them), captions tokenised.
#[derive(Clone, Debug)]
pub struct TrainData {
    images: ImageSet,
    tokens: Vec<Vec<u32>>,
}

impl TrainData {
    /// Decodes and tokenises `pairs` for a model taking `preprocess.image_size`
    /// pixels and `context` tokens. Images are kept at 9/8 of the input size
    /// (72 px for 64, as the reference run), the random crops' source.
    /// Captions longer than the context are cut, keeping the end-of-text
    /// token last. Undecodable images are skipped and reported.
    pub fn prepare(
        pairs: &[Pair],
        tokenizer: &Tokenizer,
        context: usize,
        preprocess: &PreprocessConfig,
        progress: &(dyn Fn(usize) + Sync),
    ) -> Result<(Self, SkipReport), TrainError> {
        let side = (preprocess.image_size * 9).div_ceil(8);
        let (images, kept, skipped) = ImageSet::load(pairs, side, preprocess, progress)?;
        let tokens = kept
            .iter()
            .map(|&i| tokenizer.tokenize_unpadded(&pairs[i].text, context))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TrainError::BadOption(e.to_string()))?;
        Ok((Self { images, tokens }, skipped))
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Bytes of decoded images held.
    pub fn image_bytes(&self) -> usize {
        self.images.bytes()
    }
}

/// A generator for one purpose (`what`) at one point (`at`) of a run with
/// `seed`: each is independent of the others and of how the run was
/// interrupted, which is what makes a resumed run exact.
fn rng_for(seed: u64, what: &str, at: u64) -> rand_chacha::ChaCha8Rng {
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.update(what.as_bytes());
    h.update(&at.to_le_bytes());
    rand_chacha::ChaCha8Rng::from_seed(*h.finalize().as_bytes())
}

/// The trainer: a model, its optimiser, the data and the step count.
pub struct Trainer {
    model: TrainableModel,
    optimizer: AdamW,
    options: TrainOptions,
    data: TrainData,
    preprocess: PreprocessConfig,
    step: usize,
    logit_scale: Option<Var>,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("step", &self.step)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Trainer {
    /// A trainer at step 0.
    pub fn new(
        model: TrainableModel,
        data: TrainData,
        preprocess: PreprocessConfig,
        options: TrainOptions,
    ) -> Result<Self, TrainError> {
        options.validate()?;
        if data.len() < options.batch_size {
            return Err(TrainError::NotEnoughData(format!(
                "{} usable training pairs but a batch takes {}: add data or lower --batch-size",
                data.len(),
                options.batch_size
            )));
        }
        if model.trainable().is_empty() {
            return Err(TrainError::BadOption(
                "every parameter is locked: nothing to train".into(),
            ));
        }
        let optimizer = AdamW::new(model.trainable(), options.adamw);
        let logit_scale = model
            .trainable()
            .iter()
            .find(|(n, _)| n == "logit_scale")
            .map(|(_, v)| v.clone());
        Ok(Self {
            model,
            optimizer,
            options,
            data,
            preprocess,
            step: 0,
            logit_scale,
        })
    }

    /// Steps done.
    pub fn step(&self) -> usize {
        self.step
    }

    /// The options.
    pub fn options(&self) -> &TrainOptions {
        &self.options
    }

    /// The model.
    pub fn model(&self) -> &TrainableModel {
        &self.model
    }

    /// The optimiser.
    pub fn optimizer(&self) -> &AdamW {
        &self.optimizer
    }

    /// The preprocessing recipe.
    pub fn preprocess(&self) -> &PreprocessConfig {
        &self.preprocess
    }

    /// Sets the step count and optimiser state from a checkpoint (the
    /// weights are given to [`TrainableModel::new`]).
    pub fn restore(
        &mut self,
        step: usize,
        optimizer: &std::collections::HashMap<String, Tensor>,
    ) -> Result<(), String> {
        self.optimizer.load_state(optimizer)?;
        self.step = step;
        Ok(())
    }

    /// The pairs of batch `step`: epochs are seeded permutations of the
    /// pairs, cut into whole batches (a last partial batch is dropped, as
    /// open_clip's loader does).
    pub fn batch_indices(&self, step: usize) -> Vec<usize> {
        let n = self.data.len();
        let b = self.options.batch_size;
        let per_epoch = (n / b).max(1);
        let (epoch, pos) = (step / per_epoch, step % per_epoch);
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng_for(self.options.seed, "order", epoch as u64));
        order[pos * b..(pos + 1) * b].to_vec()
    }

    /// The augmented pixels and token ids of batch `step`.
    fn batch(&self, step: usize) -> Result<(Tensor, Vec<Vec<u32>>), TrainError> {
        let indices = self.batch_indices(step);
        let s = self.preprocess.image_size;
        let per = 3 * s * s;
        let augment = CropAugment {
            scale: self.options.augment.scale,
            ratio: self.options.augment.ratio,
        };
        let mut pixels = vec![0f32; indices.len() * per];
        let seed = self.options.seed;
        pixels
            .par_chunks_mut(per)
            .zip(indices.par_iter())
            .enumerate()
            .try_for_each(|(k, (out, &i))| {
                let mut rng = rng_for(seed, "augment", (step * self.options.batch_size + k) as u64);
                self.data
                    .images
                    .augmented_pixels(i, s, &augment, &mut rng, &self.preprocess, out)
            })?;
        let pixels = Tensor::from_vec(pixels, (indices.len(), 3, s, s), &Device::Cpu)
            .map_err(TrainError::internal("building a batch"))?;
        let ids = indices
            .iter()
            .map(|&i| self.data.tokens[i].clone())
            .collect();
        Ok((pixels, ids))
    }

    /// The loss of batch `step` and the gradients of every trainable
    /// parameter, without updating anything.
    pub fn gradients(&self, step: usize) -> Result<(f32, GradStore), TrainError> {
        let (pixels, ids) = self.batch(step)?;
        match self.options.micro_batch {
            Some(m) if m < ids.len() => self.chunked_gradients(&pixels, &ids, m),
            _ => {
                let model = self.model.model();
                let run = || -> candle_core::Result<(f32, GradStore)> {
                    let img = l2_normalize(&model.image_features(&pixels)?)?;
                    let txt = l2_normalize(&model.text_features(&ids)?)?;
                    let loss = contrastive_loss(&img, &txt, model.logit_scale())?;
                    let grads = loss.backward()?;
                    Ok((loss.to_scalar::<f32>()?, grads))
                };
                run().map_err(TrainError::internal("computing the loss"))
            }
        }
    }

    /// The same gradient as the whole batch's, computed `micro` pairs at a
    /// time so that only one micro-batch's activations are alive at once
    /// (GradCache, Gao et al. 2021): embed every micro-batch without a
    /// graph, take the loss's gradient with respect to the embeddings, then
    /// run each micro-batch again and back-propagate its share.
    fn chunked_gradients(
        &self,
        pixels: &Tensor,
        ids: &[Vec<u32>],
        micro: usize,
    ) -> Result<(f32, GradStore), TrainError> {
        let model = self.model.model();
        let n = ids.len();
        let run = || -> candle_core::Result<(f32, GradStore)> {
            let starts: Vec<usize> = (0..n).step_by(micro).collect();
            let mut imgs = Vec::new();
            let mut txts = Vec::new();
            for &start in &starts {
                let len = micro.min(n - start);
                imgs.push(
                    l2_normalize(&model.image_features(&pixels.narrow(0, start, len)?)?)?.detach(),
                );
                txts.push(l2_normalize(&model.text_features(&ids[start..start + len])?)?.detach());
            }
            let img_all = Var::from_tensor(&Tensor::cat(&imgs, 0)?)?;
            let txt_all = Var::from_tensor(&Tensor::cat(&txts, 0)?)?;
            let loss = contrastive_loss(
                img_all.as_tensor(),
                txt_all.as_tensor(),
                model.logit_scale(),
            )?;
            let mut total = loss.backward()?;
            let g_img = total
                .remove(img_all.as_tensor())
                .ok_or_else(|| candle_core::Error::msg("no image gradient"))?;
            let g_txt = total
                .remove(txt_all.as_tensor())
                .ok_or_else(|| candle_core::Error::msg("no text gradient"))?;
            for &start in &starts {
                let len = micro.min(n - start);
                let img = l2_normalize(&model.image_features(&pixels.narrow(0, start, len)?)?)?;
                let txt = l2_normalize(&model.text_features(&ids[start..start + len])?)?;
                let surrogate = ((img * g_img.narrow(0, start, len)?)?.sum_all()?
                    + (txt * g_txt.narrow(0, start, len)?)?.sum_all()?)?;
                let part = surrogate.backward()?;
                for (_, var) in self.model.trainable() {
                    if let Some(g) = part.get(var.as_tensor()) {
                        let sum = match total.get(var.as_tensor()) {
                            Some(acc) => (acc + g)?,
                            None => g.clone(),
                        };
                        total.insert(var.as_tensor(), sum);
                    }
                }
            }
            Ok((loss.to_scalar::<f32>()?, total))
        };
        run().map_err(TrainError::internal("computing the loss in micro-batches"))
    }

    /// One optimiser step on the next batch.
    pub fn train_step(&mut self) -> Result<StepReport, TrainError> {
        let started = Instant::now();
        let step = self.step;
        let (loss, mut grads) = self.gradients(step)?;
        if !loss.is_finite() {
            return Err(TrainError::BadOption(format!(
                "the loss became {loss} at step {}: lower --lr or set --grad-clip-norm",
                step + 1
            )));
        }
        let grad_norm = clip_grad_norm(
            &mut grads,
            self.model.trainable(),
            self.options.grad_clip_norm,
        )?;
        let lr = cosine_lr(
            step,
            self.options.lr,
            self.options.warmup,
            self.options.steps,
        );
        self.optimizer.step(&grads, lr)?;
        drop(grads);
        let mut scale = self
            .model
            .model()
            .logit_scale()
            .to_scalar::<f32>()
            .map_err(TrainError::internal("reading the temperature"))?;
        if let Some(var) = &self.logit_scale {
            let clamped = scale.clamp(0.0, MAX_LOGIT_SCALE as f32);
            if clamped != scale {
                let t = Tensor::new(clamped, &Device::Cpu)
                    .map_err(TrainError::internal("clamping the temperature"))?;
                var.set(&t)
                    .map_err(TrainError::internal("clamping the temperature"))?;
                scale = clamped;
            }
        }
        self.step += 1;
        Ok(StepReport {
            step: self.step,
            loss,
            lr,
            scale: scale.exp(),
            grad_norm,
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}
