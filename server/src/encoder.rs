//! The query encoder: one thread that owns the model's time, so model calls
//! never block actix's workers. Requests that arrive together are encoded
//! in one batch (one model call for all waiting texts, one for all waiting
//! images), and recent text queries are remembered (typing as you type and
//! paging through results ask for the same text again and again).

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use glimpse_clip::Clip;
use tokio::sync::oneshot;

use crate::error::ApiError;
use crate::metrics::Metrics;

/// Texts remembered by the cache; it is emptied when full.
const CACHE_TEXTS: usize = 1024;
/// At most this many requests are encoded in one batch.
const MAX_BATCH: usize = 32;

type Reply = oneshot::Sender<Result<Vec<Vec<f32>>, ApiError>>;

enum Job {
    Texts(Vec<String>, Reply),
    Pixels(Vec<f32>, Reply),
}

/// A handle to the encoder thread; cheap to clone.
#[derive(Clone)]
pub(crate) struct QueryEncoder {
    jobs: mpsc::Sender<Job>,
    cache: Arc<Mutex<HashMap<String, Vec<f32>>>>,
}

impl QueryEncoder {
    /// Starts the encoder thread for `clip`.
    pub(crate) fn start(clip: Arc<Clip>, metrics: Metrics) -> Self {
        let (jobs, rx) = mpsc::channel::<Job>();
        let started = std::thread::Builder::new()
            .name("glimpse-encoder".into())
            .spawn(move || encode_loop(&clip, &rx, &metrics));
        if let Err(e) = started {
            // Every query then fails with an internal error naming this.
            crate::error::log_error(&format!("cannot start the encoder thread: {e}"));
        }
        Self {
            jobs,
            cache: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Unit-length embeddings of `texts`, in order.
    pub(crate) async fn texts(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, ApiError> {
        let mut out: Vec<Option<Vec<f32>>> = {
            let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            texts.iter().map(|t| cache.get(t).cloned()).collect()
        };
        let missing: Vec<String> = texts
            .iter()
            .zip(&out)
            .filter(|(_, v)| v.is_none())
            .map(|(t, _)| t.clone())
            .collect();
        if !missing.is_empty() {
            let (tx, rx) = oneshot::channel();
            self.send(Job::Texts(missing.clone(), tx))?;
            let vectors = receive(rx).await?;
            let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            if cache.len() + vectors.len() > CACHE_TEXTS {
                cache.clear();
            }
            let mut fresh = missing.into_iter().zip(vectors);
            for slot in out.iter_mut().filter(|v| v.is_none()) {
                if let Some((text, vector)) = fresh.next() {
                    cache.insert(text, vector.clone());
                    *slot = Some(vector);
                }
            }
        }
        out.into_iter()
            .map(|v| v.ok_or_else(|| ApiError::internal("encoding the query", "a text was lost")))
            .collect()
    }

    /// The unit-length embedding of one preprocessed image.
    pub(crate) async fn image(&self, pixels: Vec<f32>) -> Result<Vec<f32>, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.send(Job::Pixels(pixels, tx))?;
        receive(rx)
            .await?
            .pop()
            .ok_or_else(|| ApiError::internal("encoding the image", "no embedding came back"))
    }

    fn send(&self, job: Job) -> Result<(), ApiError> {
        self.jobs
            .send(job)
            .map_err(|_| ApiError::internal("encoding the query", "the encoder thread stopped"))
    }
}

async fn receive(
    rx: oneshot::Receiver<Result<Vec<Vec<f32>>, ApiError>>,
) -> Result<Vec<Vec<f32>>, ApiError> {
    rx.await
        .map_err(|_| ApiError::internal("encoding the query", "the encoder thread stopped"))?
}

fn encode_loop(clip: &Clip, rx: &mpsc::Receiver<Job>, metrics: &Metrics) {
    while let Ok(first) = rx.recv() {
        // Whatever else is already waiting joins this batch.
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut texts: Vec<(Vec<String>, Reply)> = Vec::new();
        let mut images: Vec<(Vec<f32>, Reply)> = Vec::new();
        for job in batch {
            match job {
                Job::Texts(t, reply) => texts.push((t, reply)),
                Job::Pixels(p, reply) => images.push((p, reply)),
            }
        }
        if !texts.is_empty() {
            let started = Instant::now();
            let all: Vec<&str> = texts
                .iter()
                .flat_map(|(t, _)| t.iter().map(String::as_str))
                .collect();
            let result = clip.embed_texts(&all, false).map_err(ApiError::from);
            metrics.observe_encode("text", all.len(), started.elapsed());
            answer(texts, result);
        }
        if !images.is_empty() {
            let started = Instant::now();
            let (pixels, replies): (Vec<Vec<f32>>, Vec<Reply>) = images.into_iter().unzip();
            let result = clip.embed_pixels(&pixels, false).map_err(ApiError::from);
            metrics.observe_encode("image", pixels.len(), started.elapsed());
            let sized = replies
                .into_iter()
                .map(|r| (vec![String::new()], r))
                .collect();
            answer(sized, result);
        }
    }
}

/// Splits a batch's rows among the requests (each asked for as many rows
/// as it gave inputs).
fn answer(requests: Vec<(Vec<String>, Reply)>, result: Result<Vec<Vec<f32>>, ApiError>) {
    match result {
        Ok(rows) => {
            let mut rows = rows.into_iter();
            for (inputs, reply) in requests {
                let mine: Vec<Vec<f32>> = rows.by_ref().take(inputs.len()).collect();
                let _ = reply.send(Ok(mine));
            }
        }
        Err(e) => {
            for (_, reply) in requests {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}
