//! The run's metrics log (`metrics.jsonl`) and its plot (`training.svg`).

use std::io::Write;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::error::TrainError;
use crate::eval::EvalReport;
use crate::train::StepReport;

/// `metrics.jsonl`: one line per step (`{"step", "loss", "lr", "scale",
/// "grad_norm", "seconds"}`) and one per evaluation (`{"step", "eval": {...}}`),
/// kept in memory too for the plot.
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
    steps: Vec<StepReport>,
    evals: Vec<(usize, EvalReport)>,
}

#[derive(serde::Deserialize)]
struct EvalLine {
    step: usize,
    eval: EvalReport,
}

impl MetricsLog {
    /// Opens the log of a run that has done `resume_step` steps: lines of
    /// later steps (written after the checkpoint being resumed) are dropped,
    /// so the log matches the weights. A new run (step 0) starts it afresh.
    pub fn open(path: &Path, resume_step: usize) -> Result<Self, TrainError> {
        let mut log = Self {
            path: path.to_path_buf(),
            steps: Vec::new(),
            evals: Vec::new(),
        };
        if resume_step > 0 {
            if let Ok(text) = std::fs::read_to_string(path) {
                for line in text.lines() {
                    if let Ok(e) = serde_json::from_str::<EvalLine>(line) {
                        if e.step <= resume_step {
                            log.evals.push((e.step, e.eval));
                        }
                    } else if let Ok(s) = serde_json::from_str::<StepReport>(line) {
                        if s.step <= resume_step {
                            log.steps.push(s);
                        }
                    }
                }
            }
        }
        let mut f = std::fs::File::create(path).map_err(TrainError::io(path))?;
        for s in &log.steps {
            writeln!(f, "{}", serde_json::to_string(s).unwrap_or_default())
                .map_err(TrainError::io(path))?;
        }
        for (step, e) in &log.evals {
            let line = serde_json::json!({"step": step, "eval": e});
            writeln!(f, "{line}").map_err(TrainError::io(path))?;
        }
        Ok(log)
    }

    fn append(&self, line: String) -> Result<(), TrainError> {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(TrainError::io(&self.path))?;
        writeln!(f, "{line}").map_err(TrainError::io(&self.path))
    }

    /// Logs a step.
    pub fn step(&mut self, report: &StepReport) -> Result<(), TrainError> {
        self.append(serde_json::to_string(report).unwrap_or_default())?;
        self.steps.push(*report);
        Ok(())
    }

    /// Logs an evaluation after `step` steps.
    pub fn eval(&mut self, step: usize, report: &EvalReport) -> Result<(), TrainError> {
        self.append(serde_json::json!({"step": step, "eval": report}).to_string())?;
        self.evals.push((step, *report));
        Ok(())
    }

    /// The steps logged.
    pub fn steps(&self) -> &[StepReport] {
        &self.steps
    }
}

/// Draws the training loss (with its 50-step mean) and the held-out
/// recall@1 in both directions over the steps, as an SVG.
pub fn plot_metrics(log: &MetricsLog, path: &Path) -> Result<(), TrainError> {
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (900, 640)).into_drawing_area();
        root.fill(&WHITE)?;
        let (top, bottom) = root.split_vertically(320);
        let last = log.steps.last().map_or(1, |s| s.step).max(1);
        let max_loss = log.steps.iter().map(|s| s.loss).fold(0.1f32, f32::max);
        let mut chart = ChartBuilder::on(&top)
            .caption("training loss", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(48)
            .build_cartesian_2d(0usize..last, 0f32..max_loss * 1.05)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("loss")
            .draw()?;
        chart
            .draw_series(LineSeries::new(
                log.steps.iter().map(|s| (s.step, s.loss)),
                RGBColor(170, 190, 230),
            ))?
            .label("loss")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RGBColor(170, 190, 230)));
        let window = 50;
        let smooth: Vec<(usize, f32)> = log
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let from = i.saturating_sub(window - 1);
                let part = &log.steps[from..=i];
                (
                    s.step,
                    part.iter().map(|p| p.loss).sum::<f32>() / part.len() as f32,
                )
            })
            .collect();
        chart
            .draw_series(LineSeries::new(smooth, BLUE.stroke_width(2)))?
            .label("mean of 50 steps")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE.stroke_width(2)));
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()?;

        let mut chart = ChartBuilder::on(&bottom)
            .caption("held-out recall@1", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(48)
            .build_cartesian_2d(0usize..last, 0f64..1.0)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("recall@1")
            .draw()?;
        let t2i: Vec<(usize, f64)> = log
            .evals
            .iter()
            .map(|(s, e)| (*s, e.text_to_image.r1))
            .collect();
        let i2t: Vec<(usize, f64)> = log
            .evals
            .iter()
            .map(|(s, e)| (*s, e.image_to_text.r1))
            .collect();
        chart
            .draw_series(LineSeries::new(t2i.clone(), RED.stroke_width(2)))?
            .label("text → image")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED.stroke_width(2)));
        chart.draw_series(t2i.iter().map(|&p| Circle::new(p, 3, RED.filled())))?;
        chart
            .draw_series(LineSeries::new(i2t.clone(), GREEN.stroke_width(2)))?
            .label("image → text")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], GREEN.stroke_width(2)));
        chart.draw_series(i2t.iter().map(|&p| Circle::new(p, 3, GREEN.filled())))?;
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| TrainError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })
}
